"""The vectorised full-catalogue ranking against the per-user loop it replaced.

``reference_catalogue_ranking_metrics`` (and the one-user metrics and popularity functions under it) is
the implementation as it was before vectorising, kept here verbatim as the oracle: same ties, NaN rules,
top-k lists and keys, to 1e-12.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import pytest

from metarec.eval import catalogue_ranking as CR
from metarec.eval import metrics as M
from metarec.tasks.taskset import TaskSet

RELEVANT_RATING = 4.0


# ---------------------------------------------------------------------- the old implementation (oracle)
def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


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


def _catalogue_relevance(candidates: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    candidates = np.asarray(candidates)
    return np.isin(candidates, np.asarray(relevant)).astype(np.float64)


def reference_ndcg(scores: np.ndarray, candidates: np.ndarray, relevant: np.ndarray, k: int) -> float:
    _check_k(k)
    rel = _catalogue_relevance(candidates, relevant)
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    expected, _, _ = _ranked(scores, rel)
    return _dcg(expected, k) / _dcg(np.ones(min(n_rel, k)), k)


def reference_recall(scores: np.ndarray, candidates: np.ndarray, relevant: np.ndarray, k: int) -> float:
    _check_k(k)
    rel = _catalogue_relevance(candidates, relevant)
    n_rel = rel.sum()
    if n_rel == 0:
        return float("nan")
    expected, _, _ = _ranked(scores, rel)
    return float(expected[:k].sum() / n_rel)


def reference_mrr(scores: np.ndarray, candidates: np.ndarray, relevant: np.ndarray) -> float:
    rel = _catalogue_relevance(candidates, relevant)
    if rel.sum() == 0:
        return float("nan")
    expected, group, size = _ranked(scores, rel)
    first = int(group[np.flatnonzero(expected > 0)[0]])
    before = int(size[:first].sum())
    g = int(size[first])
    m = int(round(expected[before] * g))
    j = np.arange(g - m + 1)
    ratio = (g - m - j[:-1]) / np.maximum(g - 1 - j[:-1], 1)
    prob = (m / g) * np.r_[1.0, np.cumprod(ratio)]
    return float(np.sum(prob / (before + j + 1)))


def reference_top_k_items(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return np.asarray(candidates)[order]


def _flat_top(recommendations: Sequence[np.ndarray] | np.ndarray, k: int) -> np.ndarray:
    parts = [np.asarray(r, dtype=np.int64)[:k] for r in recommendations]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _nanmean(values: Sequence[float] | Mapping) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if len(arr) else float("nan")


def reference_coverage_at_k(recommendations: Sequence[np.ndarray], catalogue: np.ndarray, k: int = 10) -> float:
    catalogue = np.unique(np.asarray(catalogue))
    if not len(catalogue):
        return float("nan")
    shown = _flat_top(recommendations, k)
    return float(np.isin(catalogue, shown).sum() / len(catalogue))


def reference_popularity_percentile(popularity: np.ndarray, catalogue: np.ndarray | None = None) -> np.ndarray:
    popularity = np.asarray(popularity, dtype=np.float64)
    ref = popularity if catalogue is None else popularity[np.asarray(catalogue)]
    ref = np.sort(ref)
    below = np.searchsorted(ref, popularity, side="left")
    equal = np.searchsorted(ref, popularity, side="right") - below
    return 100.0 * (below + 0.5 * equal) / max(len(ref), 1)


def reference_mean_popularity_percentile(recommendations: Sequence[np.ndarray], popularity: np.ndarray,
                                         catalogue: np.ndarray | None = None, k: int = 10) -> float:
    shown = _flat_top(recommendations, k)
    if not len(shown):
        return float("nan")
    return float(reference_popularity_percentile(popularity, catalogue)[shown].mean())


def reference_head_items(popularity: np.ndarray, catalogue: np.ndarray | None = None,
                         head_fraction: float = 0.2) -> np.ndarray:
    items = np.arange(len(popularity)) if catalogue is None else np.unique(np.asarray(catalogue))
    order = np.lexsort((items, -np.asarray(popularity, dtype=np.float64)[items]))
    return items[order[: int(np.ceil(head_fraction * len(items)))]]


def reference_long_tail_share(recommendations: Sequence[np.ndarray], popularity: np.ndarray,
                              catalogue: np.ndarray | None = None, head_fraction: float = 0.2, k: int = 10) -> float:
    shown = _flat_top(recommendations, k)
    if not len(shown):
        return float("nan")
    return float(1.0 - np.isin(shown, reference_head_items(popularity, catalogue, head_fraction)).mean())


def reference_catalogue_ranking_metrics(score: Callable[[int, np.ndarray], np.ndarray], tasks: TaskSet,
                                        catalogue: np.ndarray, popularity: np.ndarray, k: int = 10,
                                        threshold: float = RELEVANT_RATING) -> dict[str, float]:
    catalogue = np.unique(np.asarray(catalogue))
    ndcg, recall, rr, lists = [], [], [], []
    for t in range(len(tasks)):
        s_items, _ = tasks.support_of(t)
        q_items, q_ratings = tasks.query_of(t)
        candidates = catalogue[~np.isin(catalogue, s_items)]
        scores = np.asarray(score(t, candidates), dtype=np.float64)
        relevant = q_items[q_ratings >= threshold]
        lists.append(reference_top_k_items(scores, candidates, k))
        ndcg.append(reference_ndcg(scores, candidates, relevant, k))
        recall.append(reference_recall(scores, candidates, relevant, k))
        rr.append(reference_mrr(scores, candidates, relevant))
    return {
        f"ndcg@{k}": _nanmean(ndcg), f"recall@{k}": _nanmean(recall), "mrr": _nanmean(rr),
        f"coverage@{k}": reference_coverage_at_k(lists, catalogue, k),
        f"popularity_percentile@{k}": reference_mean_popularity_percentile(lists, popularity, catalogue, k),
        f"long_tail@{k}": reference_long_tail_share(lists, popularity, catalogue, k=k),
    }


# ---------------------------------------------------------------------- random cases
def _taskset(support: list[np.ndarray], query: list[np.ndarray], ratings: list[np.ndarray]) -> TaskSet:
    s_sizes, q_sizes = [len(s) for s in support], [len(q) for q in query]
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    return TaskSet(
        "t", np.arange(len(support)), np.r_[0, np.cumsum(s_sizes)].astype(np.int64), cat(support, np.int64),
        np.full(sum(s_sizes), 4.0, np.float32), np.r_[0, np.cumsum(q_sizes)].astype(np.int64),
        cat(query, np.int64), cat(ratings, np.float32),
    )


def _random_case(rng: np.random.Generator):
    """Items 0..n-1, a catalogue that is a random subset (sometimes all, sometimes tiny), supports and
    queries that reach outside it (and sometimes cover it: no candidates), query ratings that often miss
    the threshold (zero, one or many relevant items), and a score table per task that ties heavily
    (a few levels, a constant, rounded normals) or not at all."""
    n_items = int(rng.integers(1, 60))
    style = rng.integers(3)
    if style == 0:
        catalogue = np.arange(n_items)
    else:
        catalogue = rng.choice(n_items, size=int(rng.integers(1 if style == 1 else 0, n_items + 1)), replace=False)
    n_tasks = int(rng.integers(0, 30))
    support, query, ratings = [], [], []
    for _ in range(n_tasks):
        if rng.random() < 0.05:
            s = rng.permutation(n_items)  # every item in the support: nothing left to rank
        else:
            s = rng.choice(n_items, size=int(rng.integers(0, n_items + 1) * rng.random()), replace=False)
        rest = np.setdiff1d(np.arange(n_items), s)
        q = rng.permutation(rest)[: int(rng.choice([0, 1, 1, 2, 5, len(rest)]))]
        low = rng.random() < 0.25
        support.append(s)
        query.append(q)
        ratings.append(rng.integers(1, 4 if low else 6, len(q)).astype(np.float64))
    tasks = _taskset(support, query, ratings)
    table = np.empty((n_tasks, n_items))
    for t in range(n_tasks):
        kind = rng.integers(4)
        table[t] = (rng.integers(0, 3, n_items) if kind == 0 else np.full(n_items, 1.5) if kind == 1
                    else np.round(rng.normal(0, 1, n_items), 1) if kind == 2 else rng.normal(0, 1, n_items))
    popularity = rng.integers(0, 6, n_items)  # many ties in popularity too
    return tasks, catalogue, popularity, (lambda t, cand: table[t, cand])


def _assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert list(got) == list(want)
    for name in want:
        if math.isnan(want[name]):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-12), name


@pytest.mark.parametrize("seed", range(80))
def test_matches_the_per_user_loop_on_random_cases(seed):
    tasks, catalogue, popularity, score = _random_case(np.random.default_rng(seed))
    for k in (1, 2, 3, 10, 100):
        for threshold in (RELEVANT_RATING, 3.0):
            _assert_same(M.catalogue_ranking_metrics(score, tasks, catalogue, popularity, k, threshold),
                         reference_catalogue_ranking_metrics(score, tasks, catalogue, popularity, k, threshold))


@pytest.mark.parametrize("seed", range(10))
def test_per_task_values_match_the_one_user_metrics(seed, monkeypatch):
    # not only the means: every task's value, and across block boundaries (tiny blocks)
    monkeypatch.setattr(CR, "MAX_CELLS", 7)
    tasks, catalogue, popularity, score = _random_case(np.random.default_rng(1000 + seed))
    catalogue = np.unique(catalogue)
    for k in (1, 4):
        per_task, shown = CR.catalogue_ranking_per_task(score, tasks, catalogue, k, RELEVANT_RATING)
        lists = []
        for t in range(len(tasks)):
            cand = catalogue[~np.isin(catalogue, tasks.support_of(t)[0])]
            q_items, q_ratings = tasks.query_of(t)
            relevant = q_items[q_ratings >= RELEVANT_RATING]
            s = score(t, cand)
            lists.append(reference_top_k_items(s, cand, k))
            wants = {"ndcg": reference_ndcg(s, cand, relevant, k), "recall": reference_recall(s, cand, relevant, k),
                     "mrr": reference_mrr(s, cand, relevant)}
            for name, want in wants.items():
                got = per_task[name][t]
                same = math.isnan(got) if math.isnan(want) else got == pytest.approx(want, rel=1e-12, abs=1e-12)
                assert same, (t, name, got, want)
        np.testing.assert_array_equal(shown, _flat_top(lists, k))


def test_corners_match():
    pop = np.array([3, 1, 1, 0, 2])
    # no tasks; an empty catalogue; a task whose support covers the catalogue; all scores tied
    cases = [
        (_taskset([], [], []), np.arange(5)),
        (_taskset([np.array([0])], [np.array([1])], [np.array([5.0])]), np.zeros(0, np.int64)),
        (_taskset([np.arange(5), np.array([1])], [np.zeros(0, np.int64), np.array([2, 3])],
                  [np.zeros(0), np.array([5.0, 4.0])]), np.arange(5)),
    ]
    for tasks, catalogue in cases:
        for score in (lambda t, c: np.zeros(len(c)), lambda t, c: -c.astype(float)):
            for k in (1, 3, 9):
                _assert_same(M.catalogue_ranking_metrics(score, tasks, catalogue, pop, k),
                             reference_catalogue_ranking_metrics(score, tasks, catalogue, pop, k))
    # infinite scores tie with each other; -0.0 ties with 0.0
    tasks = _taskset([np.array([4])], [np.array([0, 2, 3])], [np.array([5.0, 4.0, 1.0])])
    for scores in (np.array([np.inf, np.inf, 0.0, -np.inf, 1.0]), np.array([0.0, -0.0, 0.0, 1.0, -0.0])):
        score = lambda t, c, s=scores: s[c]  # noqa: E731
        for k in (1, 2, 4):
            _assert_same(M.catalogue_ranking_metrics(score, tasks, np.arange(5), pop, k),
                         reference_catalogue_ranking_metrics(score, tasks, np.arange(5), pop, k))


def test_same_errors():
    tasks = _taskset([np.array([0])], [np.array([1, 2])], [np.array([5.0, 2.0])])
    bad = [(lambda t, c: np.where(c == 2, np.nan, 0.0), 2), (lambda t, c: np.zeros(len(c)), 0)]
    for score, k in bad:
        with pytest.raises(ValueError):
            reference_catalogue_ranking_metrics(score, tasks, np.arange(4), np.ones(4), k)
        with pytest.raises(ValueError):
            M.catalogue_ranking_metrics(score, tasks, np.arange(4), np.ones(4), k)
    # NaN scores of a user without relevant candidates were never looked at: still accepted
    quiet = _taskset([np.array([0])], [np.array([1])], [np.array([2.0])])
    score = lambda t, c: np.where(c == 2, np.nan, 0.0)  # noqa: E731
    _assert_same(M.catalogue_ranking_metrics(score, quiet, np.arange(4), np.ones(4), 2),
                 reference_catalogue_ranking_metrics(score, quiet, np.arange(4), np.ones(4), 2))
    # no tasks: k is never checked
    empty = _taskset([], [], [])
    _assert_same(M.catalogue_ranking_metrics(score, empty, np.arange(4), np.ones(4), 0),
                 reference_catalogue_ranking_metrics(score, empty, np.arange(4), np.ones(4), 0))
