"""Evaluation metrics: rating error, ranking within a task's query, full-catalogue ranking, popularity bias.

Every metric is a pure function of arrays. Conventions, chosen once here so every method is scored alike:

* **Ties** in predicted scores are scored in *expectation over a uniformly random order of the tied
  items* (McSherry & Najork, ECIR 2008). A constant predictor then gets the score of a random ranking -
  not the best or the worst case, and not whatever order the query happened to be stored in.
* **Within-query ranking** (MeLU / TaNP protocol): a task's query items are ranked by predicted score and
  the relevance of an item is its true rating; NDCG uses the graded gain ``2**r - 1`` and the discount
  ``1 / log2(position + 1)``. Precision and AP call an item relevant when ``rating >= threshold`` (4 on a
  1-5 scale). ``k`` larger than the query is capped at the query's size.
* **Full-catalogue ranking** for one user: scores over candidate items; the relevant items are the
  user's query items rated ``>= threshold``; NDCG is binary. Relevant items outside the candidates are
  ignored (the caller chooses the candidates, normally the catalogue minus the user's support items).
* A metric with nothing to measure (a task without relevant items for AP / recall / MRR) is NaN, and the
  averaging helpers leave NaNs out.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from metarec.eval.catalogue_ranking import catalogue_ranking_per_task
from metarec.eval.query_ranking import (RELEVANT_RATING, average_precision_at_k, map_at_k, ndcg_at_k,
                                        precision_at_k, query_ranking_metrics)
from metarec.eval.query_ranking import aligned as _aligned
from metarec.eval.query_ranking import check_k as _check_k
from metarec.tasks.taskset import TaskSet

__all__ = ["RELEVANT_RATING", "average_precision_at_k", "map_at_k", "ndcg_at_k", "precision_at_k",
           "query_ranking_metrics"]  # within-query ranking lives in metarec.eval.query_ranking


# ---------------------------------------------------------------------- rating error
def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(np.abs(y_pred - y_true))) if len(y_true) else float("nan")


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((y_pred - y_true) ** 2))) if len(y_true) else float("nan")


def mae_rmse(tasks: TaskSet, predictions: np.ndarray) -> dict[str, float]:
    """MAE and RMSE over every query rating of ``tasks`` pooled (rating-weighted: a task with more query
    ratings weighs more), plus the per-task averages (``mae_per_task``, ``rmse_per_task``)."""
    predictions = _aligned(tasks, predictions)
    err = predictions - tasks.query_rating.astype(np.float64)
    sizes = tasks.query_sizes
    out = {"mae": mae(tasks.query_rating, predictions), "rmse": rmse(tasks.query_rating, predictions)}
    nonempty = sizes > 0
    if nonempty.any():
        starts = tasks.query_ptr[:-1][nonempty]
        per_abs = np.add.reduceat(np.abs(err), starts) / sizes[nonempty]
        per_sq = np.add.reduceat(err**2, starts) / sizes[nonempty]
        out["mae_per_task"] = float(per_abs.mean())
        out["rmse_per_task"] = float(np.sqrt(per_sq).mean())
    else:
        out["mae_per_task"] = out["rmse_per_task"] = float("nan")
    return out


# ---------------------------------------------------------------------- tie-aware ranking core
def _ranked(scores: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by score (descending). Returns per position: the expected ``values`` under random tie order,
    the tie-group id, and per group its size (for pairwise expectations)."""
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


# ---------------------------------------------------------------------- full-catalogue ranking (one user)
def _catalogue_relevance(candidates: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    candidates = np.asarray(candidates)
    return np.isin(candidates, np.asarray(relevant)).astype(np.float64)


def catalogue_ndcg_at_k(scores: np.ndarray, candidates: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Binary NDCG@k of one user's ranking of ``candidates`` (item ids, scored by ``scores``) against the
    ``relevant`` item ids. Ideal DCG puts ``min(|relevant in candidates|, k)`` hits on top. NaN without
    relevant candidates."""
    _check_k(k)
    rel = _catalogue_relevance(candidates, relevant)
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    expected, _, _ = _ranked(scores, rel)
    return _dcg(expected, k) / _dcg(np.ones(min(n_rel, k)), k)


def catalogue_recall_at_k(scores: np.ndarray, candidates: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of the relevant candidates ranked in the top ``k``. NaN without relevant candidates."""
    _check_k(k)
    rel = _catalogue_relevance(candidates, relevant)
    n_rel = rel.sum()
    if n_rel == 0:
        return float("nan")
    expected, _, _ = _ranked(scores, rel)
    return float(expected[:k].sum() / n_rel)


def catalogue_mrr(scores: np.ndarray, candidates: np.ndarray, relevant: np.ndarray) -> float:
    """Reciprocal rank of the first relevant candidate (expected over random order within ties).

    If the first tie group holding relevant items starts after ``s`` items and has ``g`` items of which
    ``m`` are relevant, the first of them lands at offset ``j`` with probability
    ``C(g-1-j, m-1) / C(g, m)``. NaN without relevant candidates.
    """
    rel = _catalogue_relevance(candidates, relevant)
    if rel.sum() == 0:
        return float("nan")
    expected, group, size = _ranked(scores, rel)
    first = int(group[np.flatnonzero(expected > 0)[0]])
    before = int(size[:first].sum())
    g = int(size[first])
    m = int(round(expected[before] * g))
    j = np.arange(g - m + 1)
    # P(j) = m/g * prod_{t<j} (g-m-t)/(g-1-t)
    ratio = (g - m - j[:-1]) / np.maximum(g - 1 - j[:-1], 1)
    prob = (m / g) * np.r_[1.0, np.cumprod(ratio)]
    return float(np.sum(prob / (before + j + 1)))


def top_k_items(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best-scored candidates (ties by candidate order): a user's recommendation list."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return np.asarray(candidates)[order]


# ---------------------------------------------------------------------- popularity bias (across users)
def coverage_at_k(recommendations: Sequence[np.ndarray], catalogue: np.ndarray, k: int = 10) -> float:
    """Catalogue coverage@k: the fraction of ``catalogue`` items in at least one user's top-``k`` list."""
    catalogue = np.unique(np.asarray(catalogue))
    if not len(catalogue):
        return float("nan")
    shown = _flat_top(recommendations, k)
    return float(np.isin(catalogue, shown).sum() / len(catalogue))


def popularity_percentile(popularity: np.ndarray, catalogue: np.ndarray | None = None) -> np.ndarray:
    """Every item's popularity percentile (0-100) among the ``catalogue`` items (default: all items):
    the mid-rank ``100 * (#less popular + #equally popular / 2) / n`` - so ties share one value."""
    popularity = np.asarray(popularity, dtype=np.float64)
    ref = popularity if catalogue is None else popularity[np.asarray(catalogue)]
    ref = np.sort(ref)
    below = np.searchsorted(ref, popularity, side="left")
    equal = np.searchsorted(ref, popularity, side="right") - below
    return 100.0 * (below + 0.5 * equal) / max(len(ref), 1)


def mean_popularity_percentile(
    recommendations: Sequence[np.ndarray], popularity: np.ndarray, catalogue: np.ndarray | None = None, k: int = 10
) -> float:
    """Mean popularity percentile (0-100, see :func:`popularity_percentile`) over every recommended slot
    of every user's top-``k`` list. ``popularity`` is indexed by item (training rating count)."""
    shown = _flat_top(recommendations, k)
    if not len(shown):
        return float("nan")
    return float(popularity_percentile(popularity, catalogue)[shown].mean())


def head_items(popularity: np.ndarray, catalogue: np.ndarray | None = None, head_fraction: float = 0.2) -> np.ndarray:
    """The ``ceil(head_fraction * n)`` most popular catalogue items (ties at the boundary: lower item id first)."""
    items = np.arange(len(popularity)) if catalogue is None else np.unique(np.asarray(catalogue))
    order = np.lexsort((items, -np.asarray(popularity, dtype=np.float64)[items]))
    return items[order[: int(np.ceil(head_fraction * len(items)))]]


def long_tail_share(
    recommendations: Sequence[np.ndarray],
    popularity: np.ndarray,
    catalogue: np.ndarray | None = None,
    head_fraction: float = 0.2,
    k: int = 10,
) -> float:
    """Fraction of recommended slots (top-``k`` lists, all users) outside the head: the ``head_fraction``
    most popular catalogue items (:func:`head_items`)."""
    shown = _flat_top(recommendations, k)
    if not len(shown):
        return float("nan")
    return float(1.0 - np.isin(shown, head_items(popularity, catalogue, head_fraction)).mean())


# ---------------------------------------------------------------------- full-catalogue helper over tasks
def catalogue_ranking_metrics(
    score: Callable[[int, np.ndarray], np.ndarray],
    tasks: TaskSet,
    catalogue: np.ndarray,
    popularity: np.ndarray,
    k: int = 10,
    threshold: float = RELEVANT_RATING,
) -> dict[str, float]:
    """Full-catalogue ranking over ``tasks``: for task ``t`` the candidates are ``catalogue`` minus its
    support items, ``score(t, candidates)`` scores them (e.g. a baseline's ``score_items``), relevant =
    its query items rated ``>= threshold``. Returns means over users of ``ndcg@k``, ``recall@k``, ``mrr``,
    and over all users' top-``k`` lists ``coverage@k``, ``popularity_percentile@k``, ``long_tail@k``.

    The same values as :func:`catalogue_ndcg_at_k` & co. per user, computed for all users at once
    (:mod:`metarec.eval.catalogue_ranking`); only ``score`` is still called once per task."""
    catalogue = np.unique(np.asarray(catalogue))
    if len(tasks):
        _check_k(k)
    per_task, shown = catalogue_ranking_per_task(score, tasks, catalogue, k, threshold)
    lists = [shown]  # every user's top-k list, concatenated: one list, taken whole below
    return {
        f"ndcg@{k}": _nanmean(per_task["ndcg"]), f"recall@{k}": _nanmean(per_task["recall"]),
        "mrr": _nanmean(per_task["mrr"]),
        f"coverage@{k}": coverage_at_k(lists, catalogue, len(shown)),
        f"popularity_percentile@{k}": mean_popularity_percentile(lists, popularity, catalogue, len(shown)),
        f"long_tail@{k}": long_tail_share(lists, popularity, catalogue, k=len(shown)),
    }


# ---------------------------------------------------------------------- helpers
def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y_true, dtype=np.float64).ravel()
    b = np.asarray(y_pred, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y_true and y_pred differ in length: {len(a)} vs {len(b)}")
    return a, b


def _flat_top(recommendations: Sequence[np.ndarray] | np.ndarray, k: int) -> np.ndarray:
    parts = [np.asarray(r, dtype=np.int64)[:k] for r in recommendations]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _nanmean(values: Sequence[float] | Mapping) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if len(arr) else float("nan")
