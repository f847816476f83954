"""MeLU's cold-start protocol rebuilt from raw ratings, and its time-ordered variant.

``melu``: users with ``min_ratings``-``max_ratings`` ratings are split at random into meta-train,
validation and test users, items into old and new, and each task's query is a random ``query_size`` of
its ratings. ``time``: a user's latest ratings are the query and the earlier ones the support (users
without timestamps are left out); ``user_split="time"`` makes the latest-arriving users the test users.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError
from metarec.tasks.config import SplitConfig, validation_user_count
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet, rank_within

log = logging.getLogger(__name__)


def melu_split(dataset: RatingDataset, config: SplitConfig) -> ColdStartSplit:
    """The four scenarios (and validation tasks) of ``dataset`` under the ``melu`` or ``time`` protocol,
    every task with its whole support; deterministic in the seed."""
    rng = np.random.default_rng(config.seed)
    r = dataset.ratings
    user = r["user_idx"].to_numpy()
    item = r["item_idx"].to_numpy()
    rating = r["rating"].to_numpy(np.float32)
    ts = r["timestamp"].to_numpy(dtype=np.float64, na_value=np.nan)
    # One random key per rating decides query membership (melu) and tie-breaks (time).
    key = rng.random(len(r))

    counts = np.bincount(user, minlength=dataset.n_users)
    eligible = (counts >= config.min_ratings) & (counts <= config.max_ratings)
    if config.protocol == "time" or config.user_split == "time":
        has_time = np.zeros(dataset.n_users, bool)
        full = np.bincount(user[~np.isnan(ts)], minlength=dataset.n_users)
        has_time[(full == counts) & (counts > 0)] = True
        dropped = int((eligible & ~has_time).sum())
        if dropped:
            log.info("%s: %d eligible users without timestamps left out of the time-ordered split", dataset.name, dropped)
        eligible &= has_time
    users = np.flatnonzero(eligible)
    if len(users) < 3:
        raise ConfigError(f"{dataset.name}: only {len(users)} users have {config.min_ratings}-{config.max_ratings} ratings")

    train_users, val_users, test_users = _split_users(users, user, ts, config, rng)
    new_item_mask, rule = _new_items(dataset, item, ts, config, rng)

    role = np.full(dataset.n_users, -1, np.int8)  # 0 train, 1 val, 2 test, 3 heavy (meta-train chunks)
    role[train_users], role[val_users], role[test_users] = 0, 1, 2
    if config.heavy_users == "chunk":
        heavy = (counts > config.max_ratings) & (role < 0)
        if config.protocol == "time" or config.user_split == "time":
            heavy &= has_time
        role[heavy] = 3
    row_role = role[user]
    is_new = new_item_mask[item]
    # Order key within a user: query first. melu: random; time: latest first (random tie-break).
    order_key = key if config.protocol == "melu" else -np.nan_to_num(ts, nan=-np.inf) + key * 1e-3
    order_rank = _ranks(order_key)  # sorting by (user, order_rank) is sorting by (user, order_key)

    def tasks(name: str, mask: np.ndarray, query: int, task_key: np.ndarray | None = None) -> tuple[TaskSet, np.ndarray]:
        """Tasks over rows ``mask``: the ``query`` rows with lowest order key per task are its query."""
        key_all = user if task_key is None else task_key
        rows = np.flatnonzero(mask)
        rows = rows[_order_within(key_all[rows], order_rank[rows])]
        k = key_all[rows]
        rank = rank_within(k)
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
        sizes = np.diff(np.append(starts, len(k)))
        ok = np.repeat(sizes, sizes) >= query + config.min_support
        rows, rank = rows[ok], rank[ok]
        # Rows stay in order-key order: under the time protocol a task's support runs latest-first.
        is_query = rank < query
        ts_set = TaskSet.from_rows(name, user[rows], item[rows], rating[rows], is_query, key_all[rows])
        return ts_set, rows

    q = config.query_size
    # Warm: meta-train users with enough old-item ratings hold out q of them as a warm query.
    old_train = (row_role == 0) & ~is_new
    old_counts = np.bincount(user[old_train], minlength=dataset.n_users)
    can_hold = old_counts >= 2 * q + config.min_support
    holdout = np.zeros(len(r), bool)
    rows = np.flatnonzero(old_train & can_hold[user])
    rows = rows[_order_within(user[rows], order_rank[rows])]
    holdout[rows[rank_within(user[rows]) < q]] = True

    # Heavy users' old-item ratings: round-robin chunks of at most max_ratings, each chunk one task.
    heavy_rows = (row_role == 3) & ~is_new
    chunk = np.zeros(len(r), np.int64)
    if heavy_rows.any():
        rows = np.flatnonzero(heavy_rows)
        key_rank = order_rank if order_key is key else _ranks(key)
        rows = rows[_order_within(user[rows], key_rank[rows])]
        n_chunks = -(-np.bincount(user[rows], minlength=dataset.n_users) // config.max_ratings)
        chunk[rows] = rank_within(user[rows]) % n_chunks[user[rows]]
    task_key = user.astype(np.int64) * (int(chunk.max(initial=0)) + 1) + chunk  # (user, chunk), in that order
    meta_train, _ = tasks("meta_train", (old_train & ~holdout) | heavy_rows, q, task_key)
    # Warm test tasks: support = what meta-training used of that user, query = the held-out ratings.
    in_train = np.zeros(dataset.n_users, bool)
    in_train[meta_train.user_idx] = True
    warm_rows = old_train & can_hold[user] & in_train[user]
    warm_rows = np.flatnonzero(warm_rows)
    warm_rows = warm_rows[_order_within(user[warm_rows], order_rank[warm_rows])]
    warm = TaskSet.from_rows("warm", user[warm_rows], item[warm_rows], rating[warm_rows], holdout[warm_rows])

    test = {
        "warm": warm,
        "new_users": tasks("new_users", (row_role == 2) & ~is_new, q)[0],
        "new_items": tasks("new_items", (row_role == 0) & is_new, q)[0],
        "new_users_new_items": tasks("new_users_new_items", (row_role == 2) & is_new, q)[0],
    }
    validation = {
        "new_users": tasks("val_new_users", (row_role == 1) & ~is_new, q)[0],
        "new_users_new_items": tasks("val_new_users_new_items", (row_role == 1) & is_new, q)[0],
    }
    return ColdStartSplit(
        dataset=dataset, config=config, train_users=np.flatnonzero((role == 0) | (role == 3)), val_users=np.sort(val_users),
        test_users=np.sort(test_users), new_item_mask=new_item_mask, meta_train=meta_train,
        validation=validation, test=test, new_item_rule=rule,
    )


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each row's position in a stable sort of ``values`` (ties in row order)."""
    order = np.argsort(values)  # introsort: twice as fast, and the same order when no two values tie
    ordered = values[order]
    if len(values) and ((ordered[1:] == ordered[:-1]).any() or np.isnan(ordered[-1])):
        order = np.argsort(values, kind="stable")
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values))
    return rank


def _order_within(group: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """``np.lexsort((values, group))`` for ``rank`` = :func:`_ranks` ``(values)`` of the same rows (a subset of
    all, in row order): one sort of unique integers instead of an indirect two-key merge sort, the same
    permutation. Why: at tens of millions of ratings the split's sorts are most of its time."""
    if not len(rank):
        return np.zeros(0, np.int64)
    span = int(rank.max()) + 1
    if int(group.min()) < 0 or int(group.max()) >= np.iinfo(np.int64).max // span - 1:
        return np.lexsort((rank, group))  # the combined key would overflow
    return np.argsort(group.astype(np.int64) * span + rank)


def _split_users(users: np.ndarray, user: np.ndarray, ts: np.ndarray, config: SplitConfig, rng: np.random.Generator):
    n = len(users)
    n_test = max(1, int(round(config.test_user_fraction * n)))
    if config.user_split == "time":
        first = pd.Series(ts).groupby(user).min().reindex(users).to_numpy()
        order = users[np.lexsort((rng.random(n), first))]  # earliest first
        test_users, rest = order[n - n_test :], order[: n - n_test]
    else:
        perm = rng.permutation(users)
        test_users, rest = perm[:n_test], perm[n_test:]
    rest = rng.permutation(rest)
    n_val = validation_user_count(config, len(rest))
    return rest[n_val:], rest[:n_val], test_users


def _new_items(dataset: RatingDataset, item: np.ndarray, ts: np.ndarray, config: SplitConfig, rng) -> tuple[np.ndarray, str]:
    rule = dict(dataset.meta.get("new_item_rule", {}) or {})
    year_from = config.new_item_year if config.new_item_year is not None else rule.get("release_year_from")
    years = dataset.item_release_year()
    if year_from is not None and years is not None:
        mask = np.nan_to_num(years, nan=-np.inf) >= float(year_from)
        return mask, f"released in or after {int(year_from)}"
    fraction = float(rule.get("first_rating_fraction", config.new_item_fraction)) if config.new_item_year is None else config.new_item_fraction
    mask = np.zeros(dataset.n_items, bool)
    rated = np.unique(item)
    n_new = int(round(fraction * len(rated)))
    if not np.isnan(ts).all():
        first = pd.Series(ts).groupby(item).min()
        first = first.reindex(rated).to_numpy()
        order = rated[np.lexsort((rng.random(len(rated)), np.nan_to_num(first, nan=-np.inf)))]
        mask[order[len(rated) - n_new :]] = True
        return mask, f"the {fraction:.0%} of items first rated latest"
    log.warning("%s: no release years or timestamps; %.0f%% of items chosen as new at random", dataset.name, 100 * fraction)
    mask[rng.choice(rated, size=n_new, replace=False)] = True
    return mask, f"a random {fraction:.0%} of items (no release years or timestamps)"
