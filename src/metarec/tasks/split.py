"""One seeded cold-start split: its users, items and tasks, and the checks that nothing leaked.

Users are split into meta-train / validation / test *before* any task is built, and items into old /
new, so leakage is impossible by construction; :meth:`ColdStartSplit.leakage_checks` verifies it anyway.
The protocols that build a split from ratings are in :mod:`metarec.tasks.protocols`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.tasks.config import SplitConfig
from metarec.tasks.history import (HISTORY_AS_PRIOR, HISTORY_MAX_NEW_SUPPORT, add_user_history, heavy_user_new_item_tasks,
                                   task_rating_keys, validation_user_new_item_tasks)
from metarec.tasks.taskset import TaskSet, rank_within


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
        """Validation tasks of known heavy users on new items (:func:`heavy_user_new_item_tasks`)."""
        return heavy_user_new_item_tasks(self.dataset, self.meta_train, self.new_item_mask, self.config, seed,
                                         exclude=self.test_rating_keys())

    def test_rating_keys(self) -> np.ndarray:
        """Every rating some test task holds, as sorted unique (user, item) keys
        (:func:`~metarec.tasks.history.rating_keys`): what no validation choice may use."""
        if "test_keys" not in self._cache:
            keys = [task_rating_keys(ts, self.dataset.n_items) for ts in self.test.values()]
            self._cache["test_keys"] = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
        return self._cache["test_keys"]

    def history_choice_tasks(self, seed: int = 0) -> tuple[str, TaskSet] | None:
        """Known users on new items, each with the history a deployed model would hold, made of data no
        test task uses - what the history's penalty multiple is chosen on: (``"heavy_users"``, the heavy
        users' tasks with their meta-train history) where there are any, else (``"validation_users"``, the
        validation users' new-item ratings with their old-item validation tasks as the history,
        :func:`~metarec.tasks.history.validation_user_new_item_tasks`); None when neither exists. Ratings a
        test task holds are never among them (under MetaHIN's splits nearly all of the validation users'
        new-item ratings are, so there the multiple keeps its configured value)."""
        heavy = self.heavy_new_item_tasks(seed)
        if heavy is not None and len(heavy):
            return "heavy_users", add_user_history(heavy, self.meta_train, self.known_items(), None, True)
        old_items = self.validation.get("new_users")
        if old_items is None or not len(old_items):
            return None
        tasks = validation_user_new_item_tasks(self.dataset, old_items, self.new_item_mask, self.config, seed,
                                               exclude=self.test_rating_keys())
        if tasks is None:
            return None
        return "validation_users", add_user_history(tasks, old_items, self.known_items(), None, True)

    def validation_with_support_size(self, k: int) -> dict[str, TaskSet]:
        """The validation tasks cut to ``k`` support ratings (draw 0), cached: model selection on the
        K-curve scores every candidate on these same tasks."""
        key = ("validation_k", k)
        if key not in self._cache:
            self._cache[key] = dict(self.with_support_size(k).validation)
        return self._cache[key]

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
            "history_choice_not_in_test": self._history_choice_not_in_test(),
        }
        self._cache["leakage"] = checks
        return checks

    def _history_choice_not_in_test(self) -> bool:
        """No rating that chooses the history's multiple (:meth:`history_choice_tasks`) is in a test task."""
        found = self.history_choice_tasks()
        if found is None:
            return True
        tasks = found[1]
        rows = tasks.rows()
        chosen_on = rows["item_idx"] >= 0
        if tasks.support_prior is not None:  # the history rows are the users' own validation ratings
            chosen_on[: len(tasks.support_item)] = ~tasks.support_prior.astype(bool)
        keys = task_rating_keys(tasks, self.dataset.n_items)[chosen_on]
        return not np.isin(keys, self.test_rating_keys()).any()

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
