"""The interface every baseline shares, and the training statistics most of them start from.

Protocol (what an evaluation loop may rely on):

* ``fit(split)`` sees ``split.train_ratings()`` (meta-train users on old items) and the attribute tables
  only - never a validation or test task's ratings;
* ``predict(tasks)`` returns one rating per query row (aligned with ``tasks.query_item``), clipped to the
  dataset's rating scale. Each task's *support* set is given at test time and may be used: that is the
  cold-start call (a new user's first ratings). A task whose user was seen in training may also use what
  training learnt about that user (a prior the support refines);
* ``score_items(support, candidates)`` scores arbitrary catalogue items for one user given their support
  ``(items, ratings)``, for full-catalogue ranking. Scores are *not* clipped: clipping would create ties
  at the top of the scale and only monotone order matters for ranking;
* ``score_catalogue(tasks, catalogue)`` (optional) is ``score_items`` for every task of ``tasks`` and every
  item of ``catalogue`` at once, as a ``[tasks, catalogue]`` matrix (possibly a read-only broadcast view):
  full-catalogue ranking folds every user in with one batched call instead of one call per user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet


@runtime_checkable
class Baseline(Protocol):
    """What every baseline provides (see the module docstring for the rules of each call)."""

    name: str

    def fit(self, split: ColdStartSplit) -> "Baseline": ...

    def predict(self, tasks: TaskSet) -> np.ndarray: ...

    def score_items(
        self, support: tuple[np.ndarray, np.ndarray], candidates: np.ndarray, *, user_idx: int | None = None
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class TrainStats:
    """Counts and sums over the training ratings, indexed by internal item / user index."""

    global_mean: float
    item_count: np.ndarray  # [n_items] int64: training ratings per item (0 = new or unrated)
    item_sum: np.ndarray  # [n_items] float64
    user_count: np.ndarray  # [n_users] int64
    rating_scale: tuple[float, float]
    user: np.ndarray  # training rows
    item: np.ndarray
    rating: np.ndarray

    @property
    def known_items(self) -> np.ndarray:
        return self.item_count > 0

    @property
    def known_users(self) -> np.ndarray:
        return self.user_count > 0

    @property
    def n_items(self) -> int:
        return len(self.item_count)

    @property
    def n_users(self) -> int:
        return len(self.user_count)


def train_stats(split: ColdStartSplit) -> TrainStats:
    """Everything the simple baselines need, from ``split.train_ratings()`` only."""
    frame = split.train_ratings()
    user = frame["user_idx"].to_numpy(np.int64)
    item = frame["item_idx"].to_numpy(np.int64)
    rating = frame["rating"].to_numpy(np.float64)
    ds = split.dataset
    mu = float(rating.mean()) if len(rating) else float(np.mean(ds.rating_scale))
    return TrainStats(
        global_mean=mu,
        item_count=np.bincount(item, minlength=ds.n_items).astype(np.int64),
        item_sum=np.bincount(item, weights=rating, minlength=ds.n_items),
        user_count=np.bincount(user, minlength=ds.n_users).astype(np.int64),
        rating_scale=(float(ds.rating_scale[0]), float(ds.rating_scale[1])),
        user=user, item=item, rating=rating,
    )


def single_task(
    support: tuple[np.ndarray, np.ndarray], candidates: np.ndarray, user_idx: int | None = None
) -> TaskSet:
    """One task whose query is ``candidates`` (dummy ratings): lets ``score_items`` reuse the batched path.

    ``user_idx`` -1 stands for "an unknown user" (no trained parameters to start from).
    """
    items, ratings = (np.asarray(a) for a in support)
    candidates = np.asarray(candidates, dtype=np.int64)
    return TaskSet(
        "score_items", np.array([-1 if user_idx is None else int(user_idx)], np.int64),
        np.array([0, len(items)], np.int64), items.astype(np.int64), ratings.astype(np.float32),
        np.array([0, len(candidates)], np.int64), candidates, np.zeros(len(candidates), np.float32),
    )


class BaselineBase:
    """Shared plumbing: ``predict`` and ``score_items`` both come from one batched ``_scores``."""

    name: str = "baseline"
    _stats: TrainStats | None = None

    @property
    def stats(self) -> TrainStats:
        if self._stats is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(split) first")
        return self._stats

    def _scores(self, tasks: TaskSet) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, tasks: TaskSet) -> np.ndarray:
        """Clipped rating predictions, one per query row of ``tasks``."""
        low, high = self.stats.rating_scale
        return np.clip(self._scores(tasks), low, high)

    def score_items(
        self, support: tuple[np.ndarray, np.ndarray], candidates: np.ndarray, *, user_idx: int | None = None
    ) -> np.ndarray:
        """Unclipped scores of ``candidates`` for one user with support ``(items, ratings)``."""
        return self._scores(single_task(support, candidates, user_idx))

    # helpers ---------------------------------------------------------------
    def _known_user(self, user_idx: np.ndarray) -> np.ndarray:
        """Which tasks' users were seen in training (``-1`` = anonymous)."""
        known = self.stats.known_users
        ok = (user_idx >= 0) & (user_idx < len(known))
        out = np.zeros(len(user_idx), bool)
        out[ok] = known[user_idx[ok]]
        return out
