"""Cold-start splits: the MeLU protocol rebuilt from raw ratings, and its time-ordered variant.

Users are split into meta-train / validation / test *before* any task is built, and items into old /
new, so leakage is impossible by construction; :meth:`ColdStartSplit.leakage_checks` verifies it anyway.

Scenarios (MeLU's four states):

* ``warm`` - meta-train users on old items: support = the ratings meta-training saw, query = 10
  held-out ratings of theirs that meta-training never saw;
* ``new_users`` - test users on old items;
* ``new_items`` - meta-train users on new items (never seen in meta-training);
* ``new_users_new_items`` - test users on new items.

Validation users (carved from the meta-train users) give ``new_users`` and ``new_users_new_items``
tasks for model selection; test users are never looked at until the final evaluation.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError
from metarec.tasks.taskset import TaskSet, rank_within

log = logging.getLogger(__name__)

SCENARIOS = ("warm", "new_users", "new_items", "new_users_new_items")
VALIDATION_SCENARIOS = ("new_users", "new_users_new_items")


# How a known user's history joins a test task by default, chosen on validation tasks only (the heavy users'
# and validation users' new-item tasks of scripts/validation_sweep.py, ML-1M + IMDb and ML-100K, 3 seeds):
# every task gets it, and where the task holds new-item support ratings it sets the prior. Heavy users'
# new items, MAE averaged over seeds, ML-1M / ML-100K: history as the prior 0.823 / 0.883 (0.828 / 0.889 with
# the history's solve in its items' own vectors instead of their new-item vectors), history only below 10
# new-item support ratings (the previous rule) 0.837 / 0.901, never 0.835 / 0.895, always joined 0.849 / 0.912.
HISTORY_MAX_NEW_SUPPORT: int | None = None
HISTORY_AS_PRIOR = True


def tasks_given_history(tasks: TaskSet, known_items: np.ndarray, max_new_support: int | None) -> np.ndarray | None:
    """Which tasks a known user's history is added to (``TaskSet.with_history``'s ``only``; None: all):
    those with fewer than ``max_new_support`` support ratings of items training never saw.

    Why: a task that already holds many ratings of the kind of item its query asks about (new items)
    predicts them worse when the user's old-item ratings, *joined to its support*, outnumber them. Warm
    tasks have no new-item support ratings, so they always keep the history. K = 10 was the validation
    choice while the history joined the support; the history as the prior (``HISTORY_AS_PRIOR``) for
    every task did better on the same validation tasks, so the default is None (no limit)."""
    if max_new_support is None:
        return None
    return new_item_support_counts(tasks, known_items) < max_new_support


def tasks_with_new_item_support(tasks: TaskSet, known_items: np.ndarray) -> np.ndarray:
    """A bool per task: does its support hold a rating of an item training never saw? In those tasks a
    known user's history sets the prior (``TaskSet.with_history``'s ``as_prior``) instead of joining a
    support set of another kind of item; warm tasks' support is like the history, so it joins it."""
    return new_item_support_counts(tasks, known_items) > 0


def new_item_support_counts(tasks: TaskSet, known_items: np.ndarray) -> np.ndarray:
    """Per task, how many of its support ratings are of items training never saw."""
    new = ~known_items[tasks.support_item]
    return np.bincount(tasks.support_task[new], minlength=len(tasks))


def add_user_history(tasks: TaskSet, history: TaskSet, known_items: np.ndarray, max_new_support: int | None,
                     as_prior: bool) -> TaskSet:
    """``tasks`` with their users' ``history`` by the rule: only the tasks ``tasks_given_history`` picks,
    and with ``as_prior``, flagged to set the prior in tasks with new-item support ratings."""
    prior = tasks_with_new_item_support(tasks, known_items) if as_prior else None
    return tasks.with_history(history, only=tasks_given_history(tasks, known_items, max_new_support), as_prior=prior)


@dataclass(frozen=True)
class SplitConfig:
    """How to turn a dataset into cold-start tasks.

    ``protocol``: ``melu`` picks each task's query at random; ``time`` takes a user's latest ratings as
    the query and the earlier ones as support (users without timestamps are left out); ``splits``
    reads a peer's published split files from ``split_dir`` (see :mod:`metarec.tasks.published`).
    ``min_ratings`` / ``max_ratings``: MeLU keeps users with 13-100 ratings. A task needs
    ``query_size + min_support`` ratings in its scenario. Validation users are ``val_user_fraction`` of the
    non-test users, but at least ``min_val_users`` (never more than half of them): model selection on a
    few dozen users of a small dataset is mostly noise. ``support_size`` fixes K support ratings in
    validation and test tasks (for K-curves; tasks with fewer are dropped). New items: released in or
    after ``new_item_year`` if given (else the dataset's own rule), else the ``new_item_fraction`` of
    items first rated latest. ``heavy_users``: users with more than ``max_ratings`` ratings are never
    test or validation users; ``drop`` leaves them out (MeLU's literal protocol), ``chunk`` gives their
    old-item ratings to meta-training as several tasks of at most ``max_ratings`` ratings each, so item
    representations learn from all the training data that baselines see too.
    """

    protocol: Literal["melu", "time", "splits"] = "melu"
    query_size: int = 10
    min_support: int = 3
    min_ratings: int = 13
    max_ratings: int = 100
    test_user_fraction: float = 0.2
    val_user_fraction: float = 0.1
    min_val_users: int = 0
    user_split: Literal["random", "time"] = "random"
    new_item_year: int | None = None
    new_item_fraction: float = 0.2
    support_size: int | None = None
    split_dir: str | None = None
    heavy_users: Literal["drop", "chunk"] = "drop"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in ("melu", "time", "splits"):
            raise ConfigError(f"protocol must be 'melu', 'time' or 'splits', got {self.protocol!r}")
        if self.protocol == "splits" and not self.split_dir:
            raise ConfigError("protocol 'splits' needs split_dir (a folder of published split files)")
        if self.user_split not in ("random", "time"):
            raise ConfigError(f"user_split must be 'random' or 'time', got {self.user_split!r}")
        if self.query_size < 1 or self.min_support < 1:
            raise ConfigError("query_size and min_support must be >= 1")
        if not 0 < self.test_user_fraction < 1 or not 0 <= self.val_user_fraction < 1:
            raise ConfigError("user fractions must be in (0, 1)")
        if not 0 < self.new_item_fraction < 1:
            raise ConfigError("new_item_fraction must be in (0, 1)")
        if self.min_val_users < 0:
            raise ConfigError(f"min_val_users must be >= 0, got {self.min_val_users}")
        if self.min_ratings > self.max_ratings:
            raise ConfigError("min_ratings must be <= max_ratings")
        if self.support_size is not None and self.support_size < 1:
            raise ConfigError("support_size must be >= 1")
        if self.heavy_users not in ("drop", "chunk"):
            raise ConfigError(f"heavy_users must be 'drop' or 'chunk', got {self.heavy_users!r}")


@dataclass(frozen=True, eq=False)
class ColdStartSplit:
    """Users, items and tasks of one seeded split. Arrays hold internal indices (``*_idx``)."""

    dataset: RatingDataset
    config: SplitConfig
    train_users: np.ndarray
    val_users: np.ndarray
    test_users: np.ndarray
    new_item_mask: np.ndarray  # [n_items] bool
    meta_train: TaskSet
    validation: Mapping[str, TaskSet]
    test: Mapping[str, TaskSet]
    new_item_rule: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ derived views
    def train_ratings(self) -> pd.DataFrame:
        """Every rating meta-training may use (support and query of meta-train tasks): what baselines fit on."""
        rows = self.meta_train.rows()
        return pd.DataFrame({"user_idx": rows["user_idx"], "item_idx": rows["item_idx"], "rating": rows["rating"]})

    def train_items(self) -> np.ndarray:
        return np.unique(np.concatenate([self.meta_train.support_item, self.meta_train.query_item]))

    def known_items(self) -> np.ndarray:
        """[n_items] bool: the items training saw (every other item is new)."""
        if "known_items" not in self._cache:
            known = np.zeros(self.dataset.n_items, bool)
            known[self.train_items()] = True
            self._cache["known_items"] = known
        return self._cache["known_items"]

    def with_user_history(self, tasks: TaskSet, max_new_support: int | None = HISTORY_MAX_NEW_SUPPORT,
                          as_prior: bool = HISTORY_AS_PRIOR) -> TaskSet:
        """``tasks`` with each meta-train user's meta-train ratings added to the support set, for the
        tasks ``tasks_given_history`` picks: what a deployed model knows about a returning user. With
        ``as_prior``, in tasks with new-item support ratings the history is flagged to set the prior."""
        return add_user_history(tasks, self.meta_train, self.known_items(), max_new_support, as_prior)

    def with_support_size(self, k: int, draw: int = 0) -> "ColdStartSplit":
        """The same split with exactly ``k`` support ratings in validation and test tasks (tasks with
        fewer are left out); ``draw`` picks another seeded choice of which ``k`` (the same tasks)."""
        return _resplit_support(self, k, draw)

    def heavy_new_item_tasks(self, seed: int = 0) -> TaskSet | None:
        """Known users with long histories rating new items, made of data no scenario uses: a user with
        more than ``max_ratings`` ratings feeds meta-training with old items only (``heavy_users =
        "chunk"``), and their ratings of new items are in no task. Each such user with enough of them gives
        a task (a random ``query_size`` as the query, the rest as the support) - the new-item scenario
        (known users on new items) for validation, no test user involved. None under published splits or
        when there are none. Add the history with ``TaskSet.with_history(split.meta_train)``."""
        cfg = self.config
        if cfg.protocol == "splits":
            return None
        r = self.dataset.ratings
        user, item = r["user_idx"].to_numpy(), r["item_idx"].to_numpy()
        counts = np.bincount(user, minlength=self.dataset.n_users)
        heavy = np.zeros(self.dataset.n_users, bool)
        heavy[self.meta_train.user_idx] = True  # known to training (a user whose chunks were all too small is not)
        heavy &= counts > cfg.max_ratings
        rows = np.flatnonzero(heavy[user] & self.new_item_mask[item])
        if not len(rows):
            return None
        rng = np.random.default_rng(seed)
        rows = rows[np.lexsort((rng.random(len(rows)), user[rows]))]
        _, inverse, sizes = np.unique(user[rows], return_inverse=True, return_counts=True)
        rows = rows[sizes[inverse] >= cfg.query_size + cfg.min_support]
        if not len(rows):
            return None
        return TaskSet.from_rows("heavy_new_items", user[rows], item[rows], r["rating"].to_numpy(np.float32)[rows],
                                 rank_within(user[rows]) < cfg.query_size)

    def validation_with_support_size(self, k: int) -> dict[str, TaskSet]:
        """The validation tasks cut to ``k`` support ratings (draw 0), cached: model selection on the
        K-curve scores every candidate on these same tasks."""
        key = ("validation_k", k)
        if key not in self._cache:
            self._cache[key] = dict(self.with_support_size(k).validation)
        return self._cache[key]

    def scenario_sets(self) -> dict[str, TaskSet]:
        return dict(self.test)

    # ------------------------------------------------------------------ checks and summaries
    def leakage_checks(self) -> dict[str, bool]:
        """Each guarantee the split makes, checked on the built tasks."""
        if "leakage" in self._cache:
            return self._cache["leakage"]
        train_users = set(self.meta_train.user_idx.tolist())
        held_out = set(self.val_users.tolist()) | set(self.test_users.tolist())
        train_items = self.train_items()
        mt = self.meta_train.rows()
        train_pairs = set(zip(mt["user_idx"].tolist(), mt["item_idx"].tolist()))
        warm = self.test.get("warm")
        warm_pairs = set()
        if warm is not None:
            warm_pairs = set(zip(np.repeat(warm.user_idx, warm.query_sizes).tolist(), warm.query_item.tolist()))
        all_sets = [self.meta_train, *self.validation.values(), *self.test.values()]
        checks = {
            "test_users_not_in_meta_train": not (train_users & set(self.test_users.tolist())),
            "validation_users_not_in_meta_train": not (train_users & set(self.val_users.tolist())),
            "validation_and_test_users_disjoint": not (set(self.val_users.tolist()) & set(self.test_users.tolist())),
            "new_items_not_in_meta_train": not self.new_item_mask[train_items].any(),
            "warm_query_not_in_meta_train": not (warm_pairs & train_pairs),
            "support_query_disjoint": all(_support_query_disjoint(ts) for ts in all_sets),
            "scenario_items_match": _scenario_items_match(self),
            "scenario_users_match": _scenario_users_match(self, held_out),
        }
        self._cache["leakage"] = checks
        return checks

    def fingerprint(self) -> str:
        """sha256 over every task's users, items and ratings: equal fingerprints mean identical splits."""
        h = hashlib.sha256()
        for name, ts in [("meta_train", self.meta_train), *sorted(self.validation.items()), *sorted(self.test.items())]:
            h.update(name.encode())
            for arr in (ts.user_idx, ts.support_ptr, ts.support_item, ts.support_rating, ts.query_ptr, ts.query_item, ts.query_rating):
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        """Per scenario: users, tasks, median support and query sizes; plus every leakage check."""

        def describe(ts: TaskSet) -> dict:
            return {
                "users": int(len(np.unique(ts.user_idx))),
                "tasks": len(ts),
                "ratings": int(ts.support_sizes.sum() + ts.query_sizes.sum()),
                "median_support": float(np.median(ts.support_sizes)) if len(ts) else 0.0,
                "median_query": float(np.median(ts.query_sizes)) if len(ts) else 0.0,
                "min_query": int(ts.query_sizes.min()) if len(ts) else 0,
                "max_query": int(ts.query_sizes.max()) if len(ts) else 0,
            }

        return {
            "dataset": self.dataset.name,
            "config": asdict(self.config),
            "users": {"meta_train": len(self.train_users), "validation": len(self.val_users), "test": len(self.test_users)},
            "items": {"old": int((~self.new_item_mask).sum()), "new": int(self.new_item_mask.sum()), "rule": self.new_item_rule},
            "meta_train": describe(self.meta_train),
            "validation": {k: describe(v) for k, v in self.validation.items()},
            "scenarios": {k: describe(v) for k, v in self.test.items()},
            "leakage_checks": self.leakage_checks(),
            "fingerprint": self.fingerprint(),
        }


# ---------------------------------------------------------------------- building
def make_split(dataset: RatingDataset, config: SplitConfig | None = None) -> ColdStartSplit:
    """Build the four scenarios (and validation tasks) of ``dataset`` under ``config``; deterministic in the seed."""
    config = config or SplitConfig()
    if config.protocol == "splits":
        from metarec.tasks.published import load_published_split

        split = load_published_split(dataset, config.split_dir, config)
        return split if config.support_size is None else _resplit_support(split, config.support_size)
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

    def tasks(name: str, mask: np.ndarray, query: int, task_key: np.ndarray | None = None) -> tuple[TaskSet, np.ndarray]:
        """Tasks over rows ``mask``: the ``query`` rows with lowest order key per task are its query."""
        key_all = user if task_key is None else task_key
        rows = np.flatnonzero(mask)
        rows = rows[np.lexsort((order_key[rows], key_all[rows]))]
        k = key_all[rows]
        rank = rank_within(k)
        _, inverse, sizes = np.unique(k, return_inverse=True, return_counts=True)
        ok = sizes[inverse] >= query + config.min_support
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
    rows = rows[np.lexsort((order_key[rows], user[rows]))]
    holdout[rows[rank_within(user[rows]) < q]] = True

    # Heavy users' old-item ratings: round-robin chunks of at most max_ratings, each chunk one task.
    heavy_rows = (row_role == 3) & ~is_new
    chunk = np.zeros(len(r), np.int64)
    if heavy_rows.any():
        rows = np.flatnonzero(heavy_rows)
        rows = rows[np.lexsort((key[rows], user[rows]))]
        n_chunks = -(-np.bincount(user[rows], minlength=dataset.n_users) // config.max_ratings)
        chunk[rows] = rank_within(user[rows]) % n_chunks[user[rows]]
    task_key = user.astype(np.int64) * (1 << 20) + chunk
    meta_train, _ = tasks("meta_train", (old_train & ~holdout) | heavy_rows, q, task_key)
    # Warm test tasks: support = what meta-training used of that user, query = the held-out ratings.
    in_train = np.zeros(dataset.n_users, bool)
    in_train[meta_train.user_idx] = True
    warm_rows = old_train & can_hold[user] & in_train[user]
    warm_rows = np.flatnonzero(warm_rows)
    warm_rows = warm_rows[np.lexsort((order_key[warm_rows], user[warm_rows]))]
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
    split = ColdStartSplit(
        dataset=dataset, config=config, train_users=np.flatnonzero((role == 0) | (role == 3)), val_users=np.sort(val_users),
        test_users=np.sort(test_users), new_item_mask=new_item_mask, meta_train=meta_train,
        validation=validation, test=test, new_item_rule=rule,
    )
    if config.support_size is not None:
        split = _resplit_support(split, config.support_size)
    return split


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


def validation_user_count(config: SplitConfig, candidates: int) -> int:
    """How many of ``candidates`` non-test users validate: the fraction, at least ``min_val_users`` (at
    most half the candidates)."""
    n = int(round(config.val_user_fraction * candidates))
    return max(n, min(config.min_val_users, candidates // 2)) if config.val_user_fraction > 0 else 0


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


def _resplit_support(split: ColdStartSplit, k: int, draw: int = 0) -> ColdStartSplit:
    """Keep ``k`` support ratings per validation/test task (random under melu and published splits, the
    latest under time: there every draw is the same)."""
    rng = np.random.default_rng(split.config.seed + 7919 * k if draw == 0 else [split.config.seed, k, draw])

    def restrict(ts: TaskSet) -> TaskSet:
        sizes = ts.support_sizes
        keep_tasks = sizes >= k
        ts = ts.subset(keep_tasks)
        sizes = ts.support_sizes
        if split.config.protocol == "melu":
            key = rng.random(len(ts.support_item))
        else:
            key = np.arange(len(ts.support_item), dtype=np.float64)  # built latest-first
        task = ts.support_task
        order = np.lexsort((key, task))
        rank = np.empty(len(order), np.int64)
        rank[order] = rank_within(task[order])
        return ts.with_support(rank < k)

    return replace(
        split,
        config=replace(split.config, support_size=k),
        validation={n: restrict(v) for n, v in split.validation.items()},
        test={n: restrict(v) for n, v in split.test.items()},
        _cache={},
    )


def _support_query_disjoint(ts: TaskSet) -> bool:
    rows = ts.rows()
    if not len(rows["task"]):
        return True
    pairs = rows["task"].astype(np.int64) * (int(rows["item_idx"].max()) + 1) + rows["item_idx"]
    return len(np.unique(pairs)) == len(pairs)


def _scenario_items_match(split: ColdStartSplit) -> bool:
    def items(ts: TaskSet) -> np.ndarray:
        return np.concatenate([ts.support_item, ts.query_item])

    new = split.new_item_mask
    ok = not new[items(split.meta_train)].any()
    for name, ts in [*split.test.items(), *(("val_" + k, v) for k, v in split.validation.items())]:
        want_new = name.endswith("new_items")
        ok &= bool((new[items(ts)] == want_new).all()) if len(ts) else True
    return bool(ok)


def _scenario_users_match(split: ColdStartSplit, held_out: set) -> bool:
    train = set(split.train_users.tolist())
    test = set(split.test_users.tolist())
    val = set(split.val_users.tolist())
    known = train | val if split.config.protocol == "splits" else train  # published warm users may be ours for validation
    want = {"warm": known, "new_items": known, "new_users": test, "new_users_new_items": test}
    ok = all(set(ts.user_idx.tolist()) <= want[name] for name, ts in split.test.items())
    ok &= all(set(ts.user_idx.tolist()) <= val for ts in split.validation.values())
    ok &= set(split.meta_train.user_idx.tolist()) <= train
    return bool(ok)
