"""Non-personalised baselines: the floor any cold-start method has to clear.

None of them uses the user's own support set: they say how much is explained before knowing anything
about a user. (``with_new_items`` pools *other* users' support ratings of items released after training.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from metarec.baselines.base import BaselineBase, TrainStats, train_stats
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet, new_item_rows


@dataclass(frozen=True)
class GlobalMeanConfig:
    """No settings: the mean training rating."""


class GlobalMean(BaselineBase):
    """Predicts the mean training rating for every pair."""

    name = "global_mean"

    def __init__(self, config: GlobalMeanConfig | None = None) -> None:
        self.config = config or GlobalMeanConfig()
        self._stats: TrainStats | None = None

    def fit(self, split: ColdStartSplit) -> "GlobalMean":
        self._stats = train_stats(split)
        return self

    def _scores(self, tasks: TaskSet) -> np.ndarray:
        return np.full(len(tasks.query_item), self.stats.global_mean)

    def score_catalogue(self, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        """Every task's ``score_items`` over ``catalogue``: one value, so a read-only broadcast view."""
        return np.broadcast_to(np.float64(self.stats.global_mean), (len(tasks), len(catalogue)))


@dataclass(frozen=True)
class ItemMeanConfig:
    """``damping``: pseudo-ratings at the global mean added to every item, so an item with two 5-star
    ratings is not predicted 5 (Bayesian average; 0 = raw mean)."""

    damping: float = 5.0

    def __post_init__(self) -> None:
        if self.damping < 0:
            raise ValueError("damping must be >= 0")


class ItemMean(BaselineBase):
    """The item's damped mean training rating; the global mean for items training never saw."""

    name = "item_mean"

    def __init__(self, config: ItemMeanConfig | None = None) -> None:
        self.config = config or ItemMeanConfig()
        self._stats: TrainStats | None = None
        self.item_mean: np.ndarray | None = None

    def fit(self, split: ColdStartSplit) -> "ItemMean":
        s = self._stats = train_stats(split)
        d = self.config.damping
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (s.item_sum + d * s.global_mean) / (s.item_count + d)
        self.item_mean = np.where(s.item_count > 0, mean, s.global_mean)
        return self

    def _scores(self, tasks: TaskSet) -> np.ndarray:
        assert self.item_mean is not None
        return self.item_mean[tasks.query_item]

    def score_catalogue(self, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        """Every task's ``score_items`` over ``catalogue``: the support is unused, so one row broadcast
        (read-only) to every task."""
        assert self.item_mean is not None
        return np.broadcast_to(self.item_mean[catalogue], (len(tasks), len(catalogue)))

    def with_new_items(self, tasks: TaskSet, scale: float = 1.0) -> "ItemMean":
        """A copy whose items unseen in training have the damped mean of their ratings in ``tasks``'
        support sets (damping ``scale`` x the configured one); see :func:`new_item_rows`."""
        s = self.stats
        _, item, rating = new_item_rows(tasks, s.known_items)
        d = self.config.damping * scale
        count = np.bincount(item, minlength=s.n_items)
        total = np.bincount(item, weights=rating, minlength=s.n_items)
        out = copy.copy(self)
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = (total + d * s.global_mean) / (count + d)
        out.item_mean = np.where(count > 0, pooled, self.item_mean)
        return out


@dataclass(frozen=True)
class MostPopularConfig:
    """No settings: popularity is the number of training ratings."""


class MostPopular(BaselineBase):
    """Ranking only: an item's score is its training rating count. As a rating predictor it is the
    global mean (popularity says nothing about the rating's value), so its ``predict`` is GlobalMean's."""

    name = "most_popular"

    def __init__(self, config: MostPopularConfig | None = None) -> None:
        self.config = config or MostPopularConfig()
        self._stats: TrainStats | None = None
        self._pooled_count: np.ndarray | None = None  # with_new_items: training + pooled counts

    def fit(self, split: ColdStartSplit) -> "MostPopular":
        self._stats = train_stats(split)
        return self

    @property
    def popularity(self) -> np.ndarray:
        """Training rating count per item index (plus pooled support counts of new items, see
        :meth:`with_new_items`)."""
        return self.stats.item_count if self._pooled_count is None else self._pooled_count

    def predict(self, tasks: TaskSet) -> np.ndarray:
        low, high = self.stats.rating_scale
        return np.clip(np.full(len(tasks.query_item), self.stats.global_mean), low, high)

    def _scores(self, tasks: TaskSet) -> np.ndarray:
        return self.popularity[tasks.query_item].astype(np.float64)

    def score_catalogue(self, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        """Every task's ``score_items`` over ``catalogue``: one popularity row broadcast (read-only)."""
        return np.broadcast_to(self.popularity[catalogue].astype(np.float64), (len(tasks), len(catalogue)))

    def with_new_items(self, tasks: TaskSet, scale: float = 1.0) -> "MostPopular":
        """A copy in which items unseen in training count their ratings in ``tasks``' support sets."""
        s = self.stats
        _, item, _ = new_item_rows(tasks, s.known_items)
        out = copy.copy(self)
        out._pooled_count = s.item_count + np.bincount(item, minlength=s.n_items)
        return out
