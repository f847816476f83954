"""Full-catalogue top-N metrics for implicit feedback, vectorised over a score matrix ``[tasks, items]``.

Conventions, fixed once here so every method is scored alike:

* **Candidates**: the scenario's catalogue (:func:`scenario_catalogue`: the same rule as the explicit
  benchmark's catalogue ranking - every item rated anywhere in the dataset, only the new items in a
  new-item scenario) minus each task's own support items, which are set to ``-inf`` and ranked after
  every candidate. A method's own ``-inf`` scores are raised to the lowest finite float, so a masked
  item never outranks a candidate.
* **Relevant**: the task's query items with ``rating > 0`` (sampled negatives carry 0) that are
  candidates; relevant items outside the candidates are ignored, as in :mod:`metarec.eval.metrics`.
* **Ties** are scored in expectation over a uniformly random order of the tied candidates, as in
  :mod:`metarec.eval.metrics` (exact, deterministic, no sampling): a method that gives a block of items
  one score (an ID-only baseline on items it never saw) gets what a random order of that block gets.
  Breaking ties by item index instead would reward index order, which is not neutral on real data
  (MovieLens ids follow the catalogue's history and so popularity). Only the top-k *lists* behind
  coverage and long-tail share take one order: ties by lower item index.
* **Recall@k** = hits in the top k / |relevant| (not the ``min(k, |relevant|)`` variant, so a task
  with more than k relevant items cannot reach 1). **nDCG@k**: binary gains, discount
  ``1 / log2(rank + 2)`` (rank from 0), ideal DCG over ``min(k, |relevant|)`` hits. **MRR**: the
  reciprocal rank of the first relevant item in the full ranking. **HitRate@k**: 1 if any relevant
  item is in the top k.
* A task without relevant candidates gets NaN for every metric and is left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from metarec.data.dataset import RatingDataset
from metarec.eval.metrics import coverage_at_k, long_tail_share
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet

KS = (10, 20)
PER_TASK = ("recall", "ndcg", "hit")  # each at every k; plus "mrr"
MAX_BATCH_CELLS = 4_000_000  # scores ranked per batch (tasks x items): about 32 MB per float64 array


@dataclass(frozen=True)
class Ranking:
    """Each task's metrics (``recall@10``, ``ndcg@20``, ``mrr``, ...: arrays over tasks, NaN where a task
    has no relevant candidate) and each task's top-``max(ks)`` candidate items (coverage, long tail)."""

    per_task: Mapping[str, np.ndarray]
    top: Sequence[np.ndarray]

    def means(self) -> dict[str, float]:
        """Every per-task metric averaged over the tasks that have relevant items."""
        return {m: _nanmean(v) for m, v in self.per_task.items()}


def scenario_catalogue(split: ColdStartSplit, scenario: str) -> np.ndarray:
    """[n_items] bool: the items a scenario ranks - every item rated in the dataset, only the split's
    new items in a new-item scenario (``*new_items``); the explicit benchmark's rule."""
    catalogue = split.new_item_mask.copy() if scenario.endswith("new_items") else np.ones(split.dataset.n_items, bool)
    return catalogue & rated_items(split.dataset)


def rated_items(dataset: RatingDataset) -> np.ndarray:
    """[n_items] bool: the items with at least one interaction."""
    rated = np.zeros(dataset.n_items, bool)
    rated[dataset.ratings["item_idx"].to_numpy()] = True
    return rated


def rank_tasks(scores: np.ndarray, tasks: TaskSet, candidates: np.ndarray, ks: Sequence[int] = KS) -> Ranking:
    """Rank the candidates of every task by ``scores`` (numpy or torch, ``[len(tasks), n_items]``) and
    score each task (see the module's conventions). Large matrices are ranked in row batches."""
    scores = _as_numpy(scores)
    candidates = np.asarray(candidates, dtype=bool)
    if scores.ndim != 2 or scores.shape != (len(tasks), len(candidates)):
        raise ValueError(f"scores have shape {scores.shape}; expected ({len(tasks)}, {len(candidates)}): "
                         "one row per task, one column per item")
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be >= 1, got {ks}")
    out = {f"{m}@{k}": np.full(len(tasks), np.nan) for m in PER_TASK for k in ks}
    out["mrr"] = np.full(len(tasks), np.nan)
    top: list[np.ndarray] = []
    rows = (tasks.support_task, tasks.query_task)  # computed once, sliced per batch
    step = max(1, MAX_BATCH_CELLS // max(len(candidates), 1))
    for start in range(0, len(tasks), step):
        stop = min(start + step, len(tasks))
        batch, batch_top = _rank_batch(scores[start:stop], tasks, rows, start, stop, candidates, ks)
        for name, values in batch.items():
            out[name][start:stop] = values
        top.extend(batch_top)
    return Ranking(out, top)


def catalogue_metrics(ranking: Ranking, catalogue: np.ndarray, popularity: np.ndarray,
                      ks: Sequence[int] = KS) -> dict[str, float]:
    """Across all tasks' top-k lists: ``coverage@k`` (share of the catalogue shown to someone) and
    ``long_tail@k`` (share of shown slots outside the 20% most popular catalogue items, popularity =
    training interactions), from :mod:`metarec.eval.metrics`."""
    items = np.flatnonzero(np.asarray(catalogue, dtype=bool))
    out = {}
    for k in ks:
        out[f"coverage@{k}"] = coverage_at_k(ranking.top, items, k)
        out[f"long_tail@{k}"] = long_tail_share(ranking.top, popularity, items, k=k)
    return out


def _rank_batch(scores: np.ndarray, tasks: TaskSet, row_task: tuple[np.ndarray, np.ndarray], start: int, stop: int,
                candidates: np.ndarray, ks: tuple[int, ...]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    rows = stop - start
    support_task, query_task = row_task
    s = np.array(scores, dtype=np.float64)  # a copy: the caller's matrix is never changed
    if np.isnan(s).any():
        raise ValueError(f"scores of tasks {start}-{stop - 1} contain NaN")
    s[s == -np.inf] = np.finfo(np.float64).min  # below every real score, above the masked items
    allowed = np.broadcast_to(candidates, s.shape).copy()
    s_lo, s_hi = tasks.support_ptr[start], tasks.support_ptr[stop]
    allowed[support_task[s_lo:s_hi] - start, tasks.support_item[s_lo:s_hi]] = False
    s[~allowed] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")  # the top lists: ties by lower item index
    n_candidates = allowed.sum(1)
    top = [order[i, :min(ks[-1], int(n_candidates[i]))] for i in range(rows)]
    before, tied = _tie_groups(s, order)  # per item: candidates scored higher; candidates scored the same

    q_lo, q_hi = tasks.query_ptr[start], tasks.query_ptr[stop]
    q_task = query_task[q_lo:q_hi] - start
    q_item = tasks.query_item[q_lo:q_hi]
    keep = (tasks.query_rating[q_lo:q_hi] > 0) & allowed[q_task, q_item]
    # one item per (task, item) pair: a query never repeats an item, but a duplicate must not count twice
    pairs = np.unique(q_task[keep].astype(np.int64) * s.shape[1] + q_item[keep])
    q_task, q_item = pairs // s.shape[1], pairs % s.shape[1]
    g, e = before[q_task, q_item].astype(np.float64), tied[q_task, q_item].astype(np.float64)
    n_rel = np.bincount(q_task, minlength=rows).astype(np.float64)
    has = n_rel > 0
    # relevant items of a task in one tie group: the group's size and how many of it are relevant
    group_rel = _count_in_group(q_task, g)
    discount = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(ks[-1]) + 2.0))]  # D(n): DCG of n hits on top
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hits = np.bincount(q_task, weights=np.clip((k - g) / e, 0.0, 1.0), minlength=rows)
        gains = (discount[np.minimum(g + e, k).astype(np.int64)] - discount[np.minimum(g, k).astype(np.int64)]) / e
        dcg = np.bincount(q_task, weights=gains, minlength=rows)
        ideal = discount[np.clip(n_rel, 1, k).astype(np.int64)]
        out[f"recall@{k}"] = np.where(has, hits / np.maximum(n_rel, 1), np.nan)
        out[f"ndcg@{k}"] = np.where(has, dcg / ideal, np.nan)
        out[f"hit@{k}"] = np.where(has, _hit_probability(q_task, g, e, group_rel, k, rows), np.nan)
    out["mrr"] = np.where(has, _expected_reciprocal_rank(q_task, g, e, group_rel, rows), np.nan)
    return out, top


def _tie_groups(s: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(before, tied)`` [rows, items]: for each item the number of items scored strictly higher and the
    size of its tie group (itself included)."""
    n = s.shape[1]
    sv = np.take_along_axis(s, order, axis=1)
    pos = np.broadcast_to(np.arange(n), s.shape)
    starts = np.ones(s.shape, bool)
    starts[:, 1:] = sv[:, 1:] != sv[:, :-1]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    ends = np.ones(s.shape, bool)
    ends[:, :-1] = starts[:, 1:]
    last = np.minimum.accumulate(np.where(ends, pos, n)[:, ::-1], axis=1)[:, ::-1]  # last position of the group
    before, tied = np.empty_like(order), np.empty_like(order)
    np.put_along_axis(before, order, first, axis=1)
    np.put_along_axis(tied, order, last - first + 1, axis=1)
    return before, tied


def _count_in_group(task: np.ndarray, g: np.ndarray) -> np.ndarray:
    """For each relevant item, how many relevant items of its task share its tie group (same ``g``)."""
    if not len(task):
        return np.zeros(0)
    key = np.unique(np.c_[task, g], axis=0, return_inverse=True, return_counts=True)
    return key[2][key[1].ravel()].astype(np.float64)


def _hit_probability(task: np.ndarray, g: np.ndarray, e: np.ndarray, m: np.ndarray, k: int, rows: int) -> np.ndarray:
    """P(a relevant item in the top k) under a random order within ties: 1 if a relevant item's group lies
    wholly in the top k; else, for the group straddling position k (``t = k - g`` of its ``e`` places
    inside, ``m`` of its items relevant), ``1 - C(e - m, t) / C(e, t)``; else 0."""
    certain = np.bincount(task, weights=(g + e <= k), minlength=rows) > 0
    straddle = (g < k) & (g + e > k)
    miss = np.ones(rows)
    if straddle.any():
        t_task, t_g, t_e, t_m = task[straddle], g[straddle], e[straddle], m[straddle]
        ratio = np.ones(len(t_task))
        for i in range(k):
            inside = i < k - t_g
            ratio *= np.where(inside, np.clip((t_e - t_m - i) / np.maximum(t_e - i, 1.0), 0.0, 1.0), 1.0)
        miss[t_task] = ratio  # every straddling item of a task is in the one straddling group
    hit = np.zeros(rows)
    seen = np.bincount(task, weights=straddle, minlength=rows) > 0
    hit[seen] = 1.0 - miss[seen]
    hit[certain] = 1.0
    return hit


def _expected_reciprocal_rank(task: np.ndarray, g: np.ndarray, e: np.ndarray, m: np.ndarray, rows: int) -> np.ndarray:
    """E[1 / rank of the first relevant item] under a random order within ties: in the first group
    holding relevant items (``g`` items before it, ``e`` in it, ``m`` relevant) the first relevant one
    lands at offset ``j`` with probability ``C(e - 1 - j, m - 1) / C(e, m)`` (as
    :func:`metarec.eval.metrics.catalogue_mrr`)."""
    out = np.full(rows, np.nan)
    if not len(task):
        return out
    first_g = np.full(rows, np.inf)
    np.minimum.at(first_g, task, g)
    lead = g == first_g[task]
    t, g0, e0, m0 = task[lead], g[lead], e[lead], m[lead]
    _, one = np.unique(t, return_index=True)  # one item per task stands for its group
    t, g0, e0, m0 = t[one], g0[one], e0[one], m0[one]
    out[t] = 1.0 / (g0 + 1.0)  # no tie: the first relevant item's rank is certain
    for i in np.flatnonzero(e0 > 1):
        e_i, m_i = int(e0[i]), int(m0[i])
        j = np.arange(e_i - m_i + 1)
        ratio = (e_i - m_i - j[:-1]) / np.maximum(e_i - 1 - j[:-1], 1)
        prob = (m_i / e_i) * np.r_[1.0, np.cumprod(ratio)]
        out[t[i]] = float(np.sum(prob / (g0[i] + j + 1.0)))
    return out


def _as_numpy(scores) -> np.ndarray:
    if hasattr(scores, "detach"):  # a torch tensor, possibly on an accelerator
        scores = scores.detach().cpu()
        return (scores if scores.dtype in (torch.float32, torch.float64) else scores.float()).numpy()
    return np.asarray(scores)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")
