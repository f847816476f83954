"""Ranking within a task's query (the MeLU / TaNP protocol), vectorised over every task of a scenario.

The conventions are :mod:`metarec.eval.metrics`' (ties in expectation over a random order, graded NDCG
gain ``2**r - 1``, ``rating >= threshold`` relevant for precision and AP, ``k`` capped at the query's
size). Why a module of its own: the benchmark ranks every scenario's queries at every K, and one pass over
all tasks (segment operations on the query's CSR layout) replaces a Python loop over tasks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metarec.tasks.taskset import TaskSet

RELEVANT_RATING = 4.0


def aligned(tasks: TaskSet, predictions: np.ndarray) -> np.ndarray:
    """``predictions`` as one float per query rating of ``tasks``, or a ValueError saying how many."""
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    if len(predictions) != len(tasks.query_item):
        raise ValueError(f"{len(predictions)} predictions for {len(tasks.query_item)} query ratings")
    return predictions


def check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _segment_ranking(
    ptr: np.ndarray, ratings: np.ndarray, scores: np.ndarray, ks: Sequence[int], threshold: float
) -> dict[str, np.ndarray]:
    """Per-task ``ndcg@k``, ``precision@k``, ``map@k`` for every task ``t`` (rows ``ptr[t]:ptr[t+1]``).

    All tasks at once in numpy, so the benchmark does not pay a Python call per task: one lexsort by
    (task, -score) gives every task's ranking, tie groups are runs of equal scores inside a task, and
    per-task sums are ``bincount`` over positions ``< k``. Values match the one-task definitions (tie
    expectation, AP's pairwise term, NaN rules; an empty task is NaN everywhere). The caller checks ``k``.
    """
    ptr = np.asarray(ptr, dtype=np.int64)
    sizes = np.diff(ptr)
    n_tasks, n = len(sizes), int(sizes.sum())
    if n == 0:  # bincount of nothing is an int array; every task is empty, so every value is NaN
        return {f"{name}@{k}": np.full(n_tasks, np.nan) for k in ks for name in ("ndcg", "precision", "map")}
    offs = np.cumsum(sizes) - sizes  # where each task starts in the flat (gathered) arrays
    seg = np.repeat(np.arange(n_tasks), sizes)
    pos = np.arange(n) - offs[seg]  # rank inside the task (seg is unchanged by the sort below)
    rows = ptr[:-1][seg] + pos
    r = np.asarray(ratings)[rows].astype(np.float64)
    s = np.asarray(scores, dtype=np.float64)[rows]
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")

    order = np.lexsort((-s, seg))  # stable: ties keep storage order, as argsort(-s, kind="stable") did
    ss, r = s[order], r[order]
    new = pos == 0
    new[1:] |= ss[1:] != ss[:-1]
    gid = np.cumsum(new) - 1
    gfirst = np.flatnonzero(new)
    gsize = np.diff(np.append(gfirst, n)).astype(np.float64)

    def tie_mean(values: np.ndarray) -> np.ndarray:
        """Each position's expected value under a random order of its tie group."""
        return (np.bincount(gid, weights=values, minlength=len(gfirst)) / gsize)[gid]

    gains = 2.0**r - 1.0
    e_gain = tie_mean(gains)
    ideal_gain = gains[np.lexsort((-gains, seg))]
    gain_nan = np.bincount(seg, weights=np.isnan(gains), minlength=n_tasks) > 0  # np.sort put NaN on top
    disc = np.log2(pos + 2.0)

    rel_int = (r >= threshold).astype(np.int64)
    rel = rel_int.astype(np.float64)
    e_rel = tie_mean(rel)
    n_rel = np.bincount(seg, weights=rel, minlength=n_tasks)
    # AP: E[rel_p * precision@p] = E[rel_p] + E[rel_p rel_q] over earlier q in p's tie group
    # (m(m-1)/(g(g-1)) each) + E[rel_p] * the relevant items of earlier groups (an exact count).
    hits = np.bincount(gid, weights=e_rel, minlength=len(gfirst))
    same_pair = np.where(gsize > 1, hits * (hits - 1) / np.maximum(gsize * (gsize - 1), 1), 0.0)
    crel = np.concatenate([[0], np.cumsum(rel_int)])
    before = (crel[gfirst[gid]] - crel[offs[seg]]).astype(np.float64)
    same = (np.arange(n) - gfirst[gid]).astype(np.float64)
    ap_term = (e_rel + same_pair[gid] * same + e_rel * before) / (pos + 1)

    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in dict.fromkeys(ks):
            top = pos < k
            seg_k = seg[top]
            k_eff = np.minimum(k, sizes)

            def per_task(values: np.ndarray) -> np.ndarray:
                return np.bincount(seg_k, weights=values[top], minlength=n_tasks)

            dcg, ideal = per_task(e_gain / disc), per_task(ideal_gain / disc)
            ideal[gain_nan] = np.nan
            out[f"ndcg@{k}"] = np.where(ideal > 0, dcg / ideal, np.nan)
            out[f"precision@{k}"] = np.where(sizes > 0, per_task(e_rel) / k_eff, np.nan)
            out[f"map@{k}"] = np.where(n_rel > 0, per_task(ap_term) / np.minimum(n_rel, k_eff), np.nan)
    return out


def _one_task(true_ratings: np.ndarray, scores: np.ndarray, k: int, threshold: float, metric: str) -> float:
    """One task through the batched core (the single-task metrics share its arithmetic)."""
    true_ratings = np.asarray(true_ratings, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != true_ratings.shape:
        raise ValueError(f"scores and values differ in shape: {scores.shape} vs {true_ratings.shape}")
    values = _segment_ranking(np.array([0, true_ratings.size]), true_ratings.ravel(), scores.ravel(), (k,), threshold)
    return float(values[f"{metric}@{k}"][0])


# ---------------------------------------------------------------------- within-query ranking (one task)
def ndcg_at_k(true_ratings: np.ndarray, scores: np.ndarray, k: int) -> float:
    """NDCG@k of one task's query, graded gain ``2**rating - 1`` (as MeLU and TaNP report it).

    NaN when every gain is zero (nothing to rank).
    """
    check_k(k)
    return _one_task(true_ratings, scores, k, RELEVANT_RATING, "ndcg")


def precision_at_k(true_ratings: np.ndarray, scores: np.ndarray, k: int, threshold: float = RELEVANT_RATING) -> float:
    """Fraction of the top-``k`` query items (``k`` capped at the query size) rated ``>= threshold``."""
    check_k(k)
    if not np.asarray(true_ratings).size:
        return float("nan")
    return _one_task(true_ratings, scores, k, threshold, "precision")


def average_precision_at_k(
    true_ratings: np.ndarray, scores: np.ndarray, k: int, threshold: float = RELEVANT_RATING
) -> float:
    """AP@k of one task: ``sum_{p<=k} rel_p * precision@p / min(R, k)``, ``R`` = relevant query items.

    Under ties the expectation is exact: it needs ``E[rel_p rel_q]``, which for two positions in one tie
    group of ``g`` items holding ``m`` relevant ones is ``m (m-1) / (g (g-1))``. NaN when ``R = 0``.
    """
    check_k(k)
    if not (np.asarray(true_ratings, dtype=np.float64) >= threshold).any():
        return float("nan")  # before looking at the scores, so NaN scores are no error here
    return _one_task(true_ratings, scores, k, threshold, "map")


def map_at_k(
    true_ratings: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int, threshold: float = RELEVANT_RATING
) -> float:
    """MAP@k: the mean of :func:`average_precision_at_k` over tasks (tasks without relevant items left out)."""
    values = [average_precision_at_k(r, s, k, threshold) for r, s in zip(true_ratings, scores, strict=True)]
    return nanmean_array(np.asarray(values, dtype=np.float64))


def query_ranking_metrics(
    tasks: TaskSet, predictions: np.ndarray, ks: Sequence[int] = (1, 3, 5), threshold: float = RELEVANT_RATING
) -> dict[str, float]:
    """Within-query ranking metrics averaged over tasks: ``ndcg@k``, ``precision@k``, ``map@k`` per ``k``.

    Tasks with an empty query, and NaN values (no gain / no relevant item), are left out of the means.
    Vectorised over tasks (see :func:`_segment_ranking`): the benchmark calls this for every scenario.
    """
    predictions = aligned(tasks, predictions)
    names = [f"{name}@{k}" for k in ks for name in ("ndcg", "precision", "map")]
    if not np.diff(tasks.query_ptr).any():  # no query at all: nothing to check or measure
        return {name: float("nan") for name in names}
    for k in ks:
        check_k(k)
    per_task = _segment_ranking(tasks.query_ptr, tasks.query_rating, predictions, ks, threshold)
    return {name: nanmean_array(per_task[name]) for name in names}


def nanmean_array(values: np.ndarray) -> float:
    """The mean of the non-NaN values (NaN if none), without a list round trip (~10^5 tasks)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")
