"""The vectorised within-query ranking metrics against the per-task loop they replaced.

``reference_query_ranking_metrics`` (and the one-task metrics under it) is the implementation as it was
before vectorising, kept here verbatim as the oracle: same ties, NaN rules and keys, to 1e-12.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pytest

from metarec.eval import metrics as M
from metarec.tasks.taskset import TaskSet

RELEVANT_RATING = 4.0


# ---------------------------------------------------------------------- the old implementation (oracle)
def _ranked(scores: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if scores.shape != values.shape:
        raise ValueError(f"scores and values differ in shape: {scores.shape} vs {values.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    starts = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
    group = np.cumsum(starts) - 1
    size = np.bincount(group).astype(np.float64)
    mean = np.bincount(group, weights=values[order]) / size if len(s) else np.zeros(0)
    return mean[group], group, size


def _dcg(gains: np.ndarray, k: int) -> float:
    g = gains[:k]
    return float(np.sum(g / np.log2(np.arange(2, len(g) + 2))))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def reference_ndcg_at_k(true_ratings: np.ndarray, scores: np.ndarray, k: int) -> float:
    _check_k(k)
    gains = 2.0 ** np.asarray(true_ratings, dtype=np.float64) - 1.0
    expected, _, _ = _ranked(scores, gains)
    ideal = _dcg(np.sort(gains)[::-1], k)
    return _dcg(expected, k) / ideal if ideal > 0 else float("nan")


def reference_precision_at_k(true_ratings: np.ndarray, scores: np.ndarray, k: int,
                             threshold: float = RELEVANT_RATING) -> float:
    _check_k(k)
    rel = (np.asarray(true_ratings, dtype=np.float64) >= threshold).astype(np.float64)
    if not len(rel):
        return float("nan")
    expected, _, _ = _ranked(scores, rel)
    k = min(k, len(rel))
    return float(expected[:k].sum() / k)


def reference_average_precision_at_k(true_ratings: np.ndarray, scores: np.ndarray, k: int,
                                     threshold: float = RELEVANT_RATING) -> float:
    _check_k(k)
    rel = (np.asarray(true_ratings, dtype=np.float64) >= threshold).astype(np.float64)
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    expected, group, size = _ranked(scores, rel)
    hits = np.bincount(group, weights=expected)
    same_pair = np.where(size > 1, hits * (hits - 1) / np.maximum(size * (size - 1), 1), 0.0)
    k = min(k, len(rel))
    total = 0.0
    for p in range(k):
        a_p = expected[p]
        earlier = np.arange(p)
        same = group[earlier] == group[p]
        joint = a_p + same_pair[group[p]] * same.sum() + a_p * expected[earlier][~same].sum()
        total += joint / (p + 1)
    return float(total / min(n_rel, k))


def _nanmean(values: Sequence[float] | Mapping) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if len(arr) else float("nan")


def reference_query_ranking_metrics(tasks: TaskSet, predictions: np.ndarray, ks: Sequence[int] = (1, 3, 5),
                                    threshold: float = RELEVANT_RATING) -> dict[str, float]:
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    if len(predictions) != len(tasks.query_item):
        raise ValueError(f"{len(predictions)} predictions for {len(tasks.query_item)} query ratings")
    out: dict[str, list[float]] = {f"{name}@{k}": [] for k in ks for name in ("ndcg", "precision", "map")}
    for t in range(len(tasks)):
        q = slice(tasks.query_ptr[t], tasks.query_ptr[t + 1])
        r, s = tasks.query_rating[q], predictions[q]
        if not len(r):
            continue
        for k in ks:
            out[f"ndcg@{k}"].append(reference_ndcg_at_k(r, s, k))
            out[f"precision@{k}"].append(reference_precision_at_k(r, s, k, threshold))
            out[f"map@{k}"].append(reference_average_precision_at_k(r, s, k, threshold))
    return {name: _nanmean(values) for name, values in out.items()}


# ---------------------------------------------------------------------- random TaskSets
def _taskset(q_ratings: list[np.ndarray]) -> TaskSet:
    """Query-only tasks, built as tests/eval/test_metrics.py::_two_tasks does."""
    sizes = [len(q) for q in q_ratings]
    ratings = np.concatenate(q_ratings) if q_ratings else np.zeros(0)
    return TaskSet(
        "t", np.arange(len(sizes)), np.zeros(len(sizes) + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
        np.r_[0, np.cumsum(sizes)].astype(np.int64), np.arange(sum(sizes)), ratings.astype(np.float32),
    )


def _random_case(rng: np.random.Generator) -> tuple[TaskSet, np.ndarray]:
    """Query sizes 0-12 (many of size 1), ratings that often tie and often miss the threshold, and
    predictions drawn from a few levels (ties) or continuous, per task."""
    n_tasks = int(rng.integers(1, 40))
    sizes = rng.choice([0, 1, 1, 2, 3, 5, 8, 12], size=n_tasks)
    ratings, preds = [], []
    for size in sizes:
        low = rng.random() < 0.3  # no item at the relevance threshold
        ratings.append(rng.integers(1, 4 if low else 6, size).astype(np.float64))
        style = rng.integers(3)
        if style == 0:
            preds.append(rng.integers(0, 3, size).astype(np.float64))
        elif style == 1:
            preds.append(np.round(rng.normal(3, 1, size), 1))
        else:
            preds.append(np.full(size, 2.5))
    return _taskset(ratings), (np.concatenate(preds) if preds else np.zeros(0))


def _assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert list(got) == list(want)
    for name in want:
        if math.isnan(want[name]):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12), name


@pytest.mark.parametrize("seed", range(60))
def test_matches_the_per_task_loop_on_random_tasksets(seed):
    rng = np.random.default_rng(seed)
    tasks, pred = _random_case(rng)
    for ks in [(1, 3, 5), (1,), (2, 4, 7, 20), (5, 1, 3)]:
        for threshold in (RELEVANT_RATING, 3.0):
            _assert_same(M.query_ranking_metrics(tasks, pred, ks, threshold),
                         reference_query_ranking_metrics(tasks, pred, ks, threshold))


@pytest.mark.parametrize("seed", range(20))
def test_one_task_metrics_match_the_old_ones(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(0, 10))
    ratings = rng.integers(1, 6, n).astype(np.float64)
    scores = rng.integers(0, 3, n).astype(np.float64)
    pairs = [(M.ndcg_at_k, reference_ndcg_at_k), (M.precision_at_k, reference_precision_at_k),
             (M.average_precision_at_k, reference_average_precision_at_k)]
    for k in (1, 2, 3, 6, 15):
        for new, old in pairs:
            want, got = old(ratings, scores, k), new(ratings, scores, k)
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_corners_match():
    # every query empty, no tasks at all, a single one-item task, all-equal predictions and ratings
    for q in ([np.zeros(0), np.zeros(0)], [], [np.array([5.0])], [np.full(6, 4.0), np.full(3, 2.0)]):
        tasks = _taskset(q)
        pred = np.zeros(len(tasks.query_item))
        _assert_same(M.query_ranking_metrics(tasks, pred, (1, 3)), reference_query_ranking_metrics(tasks, pred, (1, 3)))
    # ratings of NaN (no gain, never relevant) and infinite predictions
    tasks = _taskset([np.array([np.nan, 5, 3.0]), np.array([4, 1.0]), np.array([5, 2, 4.0])])
    pred = np.array([1.0, np.inf, np.inf, -np.inf, 0.0, 2.0, 2.0, -np.inf])
    _assert_same(M.query_ranking_metrics(tasks, pred, (1, 2, 3)), reference_query_ranking_metrics(tasks, pred, (1, 2, 3)))


def test_same_errors():
    tasks = _taskset([np.array([5, 3.0]), np.array([4.0])])
    for bad_pred, ks in ((np.array([1.0, np.nan, 0.0]), (1,)), (np.zeros(3), (0,)), (np.zeros(2), (1,))):
        with pytest.raises(ValueError):
            reference_query_ranking_metrics(tasks, bad_pred, ks)
        with pytest.raises(ValueError):
            M.query_ranking_metrics(tasks, bad_pred, ks)
    # nothing to rank: neither checks k
    empty = _taskset([np.zeros(0)])
    _assert_same(M.query_ranking_metrics(empty, np.zeros(0), (0,)), reference_query_ranking_metrics(empty, np.zeros(0), (0,)))
    # AP of a task without relevant items is NaN before the scores are looked at
    assert math.isnan(M.average_precision_at_k(np.array([1.0, 2.0]), np.array([np.nan, 0.0]), 2))
