"""Full-catalogue ranking, vectorised over every task of a scenario: per-task binary NDCG@k, recall@k,
MRR and top-k lists in one numpy pass.

The conventions are :mod:`metarec.eval.metrics`' (ties in expectation over a random order of the tied
candidates, relevant = query items rated ``>= threshold`` among the candidates, NaN without relevant
candidates, top-k lists break ties by candidate order). Why a module of its own: the benchmark ranks the
whole catalogue for every user of every scenario, and per-user metric calls (a sort, an ``isin`` and a
tie pass each) cost more than the scorers themselves. Only the scorer is still called once per task:
that is its interface.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from metarec.tasks.taskset import TaskSet

MAX_CELLS = 4_000_000  # tasks x catalogue items ranked per pass: bounds memory (a few 32 MB arrays)


def catalogue_ranking_per_task(
    score: Callable[[int, np.ndarray], np.ndarray],
    tasks: TaskSet,
    catalogue: np.ndarray,
    k: int,
    threshold: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per task ``ndcg``, ``recall``, ``mrr`` (arrays over tasks, NaN without relevant candidates) and every
    task's top-``k`` candidates concatenated in task order. ``catalogue`` must be sorted and unique.

    Task ``t``'s candidates are ``catalogue`` minus its support items, scored by ``score(t, candidates)``;
    tasks are taken in blocks of at most :data:`MAX_CELLS` cells so memory stays bounded."""
    catalogue = np.asarray(catalogue)
    n_tasks, n_cat = len(tasks), len(catalogue)
    per_task = {name: np.full(n_tasks, np.nan) for name in ("ndcg", "recall", "mrr")}
    shown = []
    step = max(1, MAX_CELLS // max(n_cat, 1))
    relevant = tasks.query_rating >= threshold
    for start in range(0, n_tasks, step):  # blocks of tasks, not one pass per task
        stop = min(start + step, n_tasks)
        keep = ~_membership(catalogue, tasks.support_ptr, tasks.support_item, start, stop)
        rel = _membership(catalogue, tasks.query_ptr, tasks.query_item, start, stop, relevant)[keep]
        sizes = keep.sum(axis=1)
        scores = np.empty(int(sizes.sum()))
        offset = 0
        for t, row in zip(range(start, stop), keep):  # the scorer's interface is one task at a time
            s = np.asarray(score(t, catalogue[row]), dtype=np.float64)
            if s.shape != (sizes[t - start],):
                raise ValueError(f"task {t}: {s.shape} scores for {sizes[t - start]} candidates")
            scores[offset:offset + len(s)] = s
            offset += len(s)
        items = np.broadcast_to(catalogue, keep.shape)[keep]
        block, top = segment_catalogue_ranking(sizes, scores, rel.astype(np.float64), items, k)
        for name, values in block.items():
            per_task[name][start:stop] = values
        shown.append(top)
    return per_task, (np.concatenate(shown) if shown else catalogue[:0])


def segment_catalogue_ranking(
    sizes: np.ndarray, scores: np.ndarray, relevance: np.ndarray, items: np.ndarray, k: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Binary NDCG@k, recall@k and MRR of every segment (task ``i`` owns the next ``sizes[i]`` rows of the
    flat ``scores`` / 0-1 ``relevance`` / ``items``), and the segments' top-``k`` items concatenated.

    One lexsort by (segment, -score) ranks every segment (stable: ties keep candidate order, as
    ``argsort(-s, kind="stable")`` did); tie groups are runs of equal scores inside a segment and each
    position's expected relevance is its group's mean. MRR sums, per segment, over where the first
    relevant item of the first tie group holding one can land - a padded matrix over those segments,
    with the same ``cumprod`` as the one-user formula in :func:`metarec.eval.metrics.catalogue_mrr`."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n_seg, n = len(sizes), int(sizes.sum())
    nan = np.full(n_seg, np.nan)
    if n == 0:
        return {"ndcg": nan, "recall": nan.copy(), "mrr": nan.copy()}, items[:0]
    seg = np.repeat(np.arange(n_seg), sizes)
    n_rel = np.bincount(seg, weights=relevance, minlength=n_seg)
    has = n_rel > 0
    if np.isnan(scores[has[seg]]).any():  # as before: NaN scores matter only where there is something to rank
        raise ValueError("scores contain NaN")
    order = np.lexsort((-scores, seg))
    s, r, items = scores[order], relevance[order], np.asarray(items)[order]
    pos = np.arange(n) - (np.cumsum(sizes) - sizes)[seg]  # rank inside the segment (seg is sorted already)
    new = pos == 0
    new[1:] |= s[1:] != s[:-1]
    group = np.cumsum(new) - 1
    g_size = np.bincount(group).astype(np.float64)
    g_sum = np.bincount(group, weights=r)
    expected = (g_sum / g_size)[group]

    top = pos < k
    seg_top, exp_top = seg[top], expected[top]
    dcg = np.bincount(seg_top, weights=exp_top / np.log2(pos[top] + 2.0), minlength=n_seg)
    hits = np.bincount(seg_top, weights=exp_top, minlength=n_seg)
    n_ideal = np.minimum(n_rel[has], k).astype(np.int64)  # >= 1 where has
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, n_ideal.max() + 2))) if has.any() else np.zeros(0)
    ndcg, recall = nan.copy(), nan.copy()
    ndcg[has] = dcg[has] / ideal[n_ideal - 1]
    recall[has] = hits[has] / n_rel[has]
    mrr = _segment_mrr(seg, pos, group, g_size, g_sum, expected, n_seg)
    return {"ndcg": ndcg, "recall": recall, "mrr": mrr}, items[top]


def _segment_mrr(seg: np.ndarray, pos: np.ndarray, group: np.ndarray, g_size: np.ndarray, g_sum: np.ndarray,
                 expected: np.ndarray, n_seg: int) -> np.ndarray:
    """Expected reciprocal rank of each segment's first relevant item (NaN where none): if its tie group
    starts after ``b`` items and holds ``g`` items of which ``m`` are relevant, the first of them lands at
    offset ``j`` with probability ``m/g * prod_{t<j} (g-m-t)/(g-1-t)``."""
    out = np.full(n_seg, np.nan)
    hit = np.flatnonzero(expected > 0)
    if not len(hit):
        return out
    owners, first_of = np.unique(seg[hit], return_index=True)  # seg is sorted: first hit per segment
    first = hit[first_of]
    before = pos[first].astype(np.float64)
    g = g_size[group[first]]
    m = np.rint(g_sum[group[first]])
    length = (g - m + 1).astype(np.int64)  # offsets j = 0 .. g - m
    j = np.arange(length.max(), dtype=np.float64)
    ratio = (g[:, None] - m[:, None] - j[None, :-1]) / np.maximum(g[:, None] - 1 - j[None, :-1], 1)
    prob = (m / g)[:, None] * np.hstack([np.ones((len(g), 1)), np.cumprod(ratio, axis=1)])
    terms = np.where(j[None, :] < length[:, None], prob / (before[:, None] + j[None, :] + 1), 0.0)
    out[owners] = terms.sum(axis=1)
    return out


def _membership(catalogue: np.ndarray, ptr: np.ndarray, item: np.ndarray, start: int, stop: int,
                mask: np.ndarray | None = None) -> np.ndarray:
    """[stop - start, len(catalogue)] bool: which catalogue items tasks ``start:stop`` list in the CSR rows
    ``ptr`` / ``item`` (rows where ``mask`` holds, if given) - a vectorised ``np.isin`` per task."""
    out = np.zeros((stop - start, len(catalogue)), bool)
    lo, hi = int(ptr[start]), int(ptr[stop])
    rows = np.repeat(np.arange(stop - start), np.diff(ptr[start:stop + 1]))
    items = np.asarray(item[lo:hi])
    if mask is not None:
        rows, items = rows[mask[lo:hi]], items[mask[lo:hi]]
    at = np.minimum(np.searchsorted(catalogue, items), max(len(catalogue) - 1, 0))
    found = catalogue[at] == items if len(catalogue) else np.zeros(len(items), bool)
    out[rows[found], at[found]] = True
    return out
