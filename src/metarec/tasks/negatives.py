"""Negative sampling for implicit feedback: unobserved items drawn per task, for every task at once.

With implicit feedback a task holds positives only (:func:`metarec.data.implicit.to_implicit`); a
ranking loss needs items the user did not pick. They are drawn from the catalogue, uniformly or in
proportion to a popularity weight, never among the task's own support or query items (positive or
not), and distinct within a task. Drawing is vectorised over tasks: one batch of draws, collisions
rejected by membership of sorted ``task * n_items + item`` keys, only the rejected ones redrawn. A
task whose free candidates are few or light (rejection would crawl) is drawn exactly instead, by
exponential keys over its whole candidate row; both give the same law (successive sampling without
replacement, in proportion to the weights).
"""

from __future__ import annotations

import logging

import numpy as np

from metarec.errors import ConfigError
from metarec.tasks.taskset import TaskSet, rank_within

log = logging.getLogger(__name__)

MAX_ROUNDS = 12  # rejection rounds before the tasks still short are drawn exactly
MIN_FREE_MASS = 0.05  # a task whose free candidates hold less of the weight is drawn exactly at once
EXACT_CELLS = 1 << 21  # (task, candidate) cells per chunk of the exact draw: bounds its memory


def sample_negatives(
    tasks: TaskSet,
    n_items: int,
    per_task: int | np.ndarray,
    generator: np.random.Generator,
    *,
    popularity: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(task index, item index)`` of ``per_task`` negatives per task, sorted by task (drawn order within).

    Items are drawn without replacement within a task, uniformly over ``candidates`` (bool mask
    ``[n_items]``; None: every item) or in proportion to ``popularity`` (``[n_items]`` non-negative
    weights; a zero weight is never drawn), and never one in the task's support or query. A task asking
    for more than its candidates hold gets all of them (one warning per call).
    """
    weight = _weights(n_items, popularity, candidates)
    n = len(tasks)
    want = _per_task(per_task, n)
    rows = tasks.rows()
    _check_items(rows["item_idx"], n_items)
    forbidden = _sorted_unique(rows["task"].astype(np.int64) * n_items + rows["item_idx"])
    f_task, f_item = forbidden // n_items, forbidden % n_items
    pool = np.flatnonzero(weight > 0)
    held = np.bincount(f_task, weights=weight[f_item] > 0, minlength=n).astype(np.int64)
    available = len(pool) - held
    short = want > available
    if short.any():
        log.warning("%d of %d tasks ask for more negatives than their candidates hold (%d tasks have none "
                    "left); they get every candidate they have", int(short.sum()), n, int((available == 0).sum()))
    need = np.minimum(want, available)
    total = float(weight.sum())
    free_mass = total - np.bincount(f_task, weights=weight[f_item], minlength=n)
    active = (need > 0) & (need < available) & (free_mass >= MIN_FREE_MASS * total)

    cdf = np.cumsum(weight[pool])
    taken = np.zeros(0, np.int64)  # sorted keys of the negatives accepted so far
    out_task: list[np.ndarray] = []
    out_item: list[np.ndarray] = []
    for _ in range(MAX_ROUNDS):
        if not active.any():
            break
        t = np.repeat(np.flatnonzero(active), need[active])
        drawn = np.minimum(np.searchsorted(cdf, generator.random(len(t)) * cdf[-1], "right"), len(pool) - 1)
        item = pool[drawn]
        key = t * n_items + item
        first = np.zeros(len(key), bool)
        by_key = np.argsort(key, kind="stable")
        sorted_key = key[by_key]
        first[by_key[np.r_[True, sorted_key[1:] != sorted_key[:-1]]]] = True  # a repeated key's first draw is kept
        ok = first & ~_member(key, forbidden) & ~_member(key, taken)
        out_task.append(t[ok])
        out_item.append(item[ok])
        taken = np.sort(np.concatenate([taken, key[ok]]))
        need = need - np.bincount(t[ok], minlength=n)
        active &= need > 0

    left = np.flatnonzero(need > 0)
    if len(left):
        # only the short tasks' keys: a union over every task's costs seconds on a large epoch
        blocked = _sorted_unique(np.concatenate([forbidden[np.isin(f_task, left)], taken[np.isin(taken // n_items, left)]]))
        t, item = _draw_exact(left, need[left], pool, weight[pool], blocked, n_items, generator)
        out_task.append(t)
        out_item.append(item)
    task = np.concatenate(out_task) if out_task else np.zeros(0, np.int64)
    item = np.concatenate(out_item) if out_item else np.zeros(0, np.int64)
    order = np.argsort(task, kind="stable")
    return task[order].astype(np.int64), item[order].astype(np.int64)


def with_negatives(
    tasks: TaskSet,
    n_items: int,
    generator: np.random.Generator,
    *,
    query_ratio: float = 4.0,
    support_ratio: float = 0.0,
    popularity: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    name: str | None = None,
) -> TaskSet:
    """``tasks`` with sampled negatives (rating 0) after each task's query and support rows.

    A task gets ``query_ratio`` x its query size negatives in its query and ``support_ratio`` x its
    support size in its support (rounded half up; at least one where the ratio is positive and the rows
    exist). One draw serves both, so a task's support and query negatives never share an item, and none
    is any of its positives; a task short of candidates fills its query first. Task order, users and
    the positives (ratings and order) are kept; ``support_prior`` flags the negatives False.
    """
    n = len(tasks)
    q_neg = _how_many(tasks.query_sizes, query_ratio, "query_ratio")
    s_neg = _how_many(tasks.support_sizes, support_ratio, "support_ratio")
    neg_task, neg_item = sample_negatives(tasks, n_items, q_neg + s_neg, generator,
                                          popularity=popularity, candidates=candidates)
    got = np.bincount(neg_task, minlength=n)
    to_query = rank_within(neg_task) < np.minimum(q_neg, got)[neg_task]  # drawn order is random: a fair split
    q_ptr, q_item, q_rating, _ = _append(tasks.query_ptr, tasks.query_item, tasks.query_rating,
                                         neg_task[to_query], neg_item[to_query])
    s_ptr, s_item, s_rating, s_order = _append(tasks.support_ptr, tasks.support_item, tasks.support_rating,
                                               neg_task[~to_query], neg_item[~to_query])
    prior = None
    if tasks.support_prior is not None:
        prior = np.concatenate([tasks.support_prior.astype(bool), np.zeros(int((~to_query).sum()), bool)])[s_order]
    return TaskSet(name or tasks.name, tasks.user_idx, s_ptr, s_item, s_rating, q_ptr, q_item, q_rating, prior)


# ---------------------------------------------------------------------------------------------- helpers
def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique(keys)`` by one sort and a comparison (np.unique is ~30x slower on millions of keys)."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys`` (sorted, unique): one binary search each."""
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _draw_exact(task: np.ndarray, need: np.ndarray, pool: np.ndarray, weight: np.ndarray, blocked: np.ndarray,
                n_items: int, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``need[k]`` items of task ``task[k]`` over its unblocked candidates: the smallest Exp(1) / weight
    keys of a row, which is successive sampling by weight without replacement (Efraimidis-Spirakis)."""
    out_task, out_item = [], []
    rows = max(1, EXACT_CELLS // len(pool))
    for start in range(0, len(task), rows):
        chunk, k = task[start:start + rows], need[start:start + rows]
        keys = generator.exponential(size=(len(chunk), len(pool))) / weight
        cell = chunk[:, None] * n_items + pool[None, :]
        keys[_member(cell.ravel(), blocked).reshape(cell.shape)] = np.inf
        order = np.argsort(keys, axis=1, kind="stable")
        pick = np.arange(len(pool))[None, :] < k[:, None]  # k never exceeds a row's finite keys
        out_task.append(np.repeat(chunk, k))
        out_item.append(pool[order[pick]])
    return np.concatenate(out_task), np.concatenate(out_item)


def _append(ptr: np.ndarray, item: np.ndarray, rating: np.ndarray, neg_task: np.ndarray,
            neg_item: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CSR rows with each task's negatives (rating 0) after its own rows; the order applied, for flags."""
    n = len(ptr) - 1
    all_task = np.concatenate([np.repeat(np.arange(n), np.diff(ptr)), neg_task])
    order = np.argsort(all_task, kind="stable")  # own rows come first in the concatenation: they stay first
    items = np.concatenate([item, neg_item])[order].astype(np.int64)
    ratings = np.concatenate([rating.astype(np.float32), np.zeros(len(neg_item), np.float32)])[order]
    counts = np.bincount(all_task, minlength=n)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items, ratings, order


def _how_many(sizes: np.ndarray, ratio: float, field: str) -> np.ndarray:
    ratio = float(ratio)
    if not np.isfinite(ratio) or ratio < 0:
        raise ConfigError(f"{field} must be a finite number >= 0, got {ratio!r}")
    k = np.floor(ratio * sizes + 0.5).astype(np.int64)
    return np.where((sizes > 0) & (ratio > 0), np.maximum(k, 1), 0)


def _weights(n_items: int, popularity: np.ndarray | None, candidates: np.ndarray | None) -> np.ndarray:
    """One drawing weight per item (0: never drawn), checked."""
    if int(n_items) < 1:
        raise ConfigError(f"n_items must be >= 1, got {n_items!r}")
    weight = np.ones(n_items)
    if popularity is not None:
        weight = np.asarray(popularity, dtype=np.float64)
        if weight.shape != (n_items,):
            raise ConfigError(f"popularity has shape {weight.shape}; expected ({n_items},), one weight per item")
        if not np.isfinite(weight).all() or (weight < 0).any():
            raise ConfigError("popularity weights must be finite and >= 0")
    if candidates is not None:
        mask = np.asarray(candidates)
        if mask.dtype != bool or mask.shape != (n_items,):
            raise ConfigError(f"candidates must be a bool mask of shape ({n_items},), got {mask.dtype} "
                              f"{mask.shape}")
        weight = np.where(mask, weight, 0.0)
    if not (weight > 0).any():
        raise ConfigError("no item can be drawn as a negative: every candidate is masked out or has weight 0")
    return weight


def _per_task(per_task: int | np.ndarray, n: int) -> np.ndarray:
    want = np.asarray(per_task)
    if want.ndim == 0:
        want = np.full(n, want)
    if want.shape != (n,):
        raise ConfigError(f"per_task has shape {want.shape}; expected a number or ({n},), one per task")
    if len(want) and (not np.all(np.isfinite(want.astype(np.float64))) or np.any(want != np.round(want))
                      or np.any(want < 0)):
        raise ConfigError("per_task must hold whole numbers >= 0")
    return want.astype(np.int64)


def _check_items(items: np.ndarray, n_items: int) -> None:
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ConfigError(f"the tasks hold item index {int(items.max() if items.max() >= n_items else items.min())}, "
                          f"outside 0..{n_items - 1} (n_items={n_items})")
