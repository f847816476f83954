"""Non-personalised baselines: the floor any cold-start method has to clear.

None of them uses the support set: they say how much is explained before knowing anything about a user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.baselines.base import BaselineBase, TrainStats, train_stats
from metarec.tasks.splits import ColdStartSplit
from metarec.tasks.taskset import TaskSet


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

    def fit(self, split: ColdStartSplit) -> "MostPopular":
        self._stats = train_stats(split)
        return self

    @property
    def popularity(self) -> np.ndarray:
        """Training rating count per item index."""
        return self.stats.item_count

    def predict(self, tasks: TaskSet) -> np.ndarray:
        low, high = self.stats.rating_scale
        return np.clip(np.full(len(tasks.query_item), self.stats.global_mean), low, high)

    def _scores(self, tasks: TaskSet) -> np.ndarray:
        return self.stats.item_count[tasks.query_item].astype(np.float64)
