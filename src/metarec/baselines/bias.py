"""Global mean + user bias + item bias: the strongest simple cold-start baseline on MovieLens.

Why it matters: most of what a new user's first ratings reveal is how generous a rater they are; a
meta-learner that does not beat this has learnt nothing beyond a bias.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from metarec.baselines.attributes import item_design
from metarec.baselines.base import BaselineBase, TrainStats, train_stats
from metarec.linalg import ridge_fit
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet, new_item_rows


@dataclass(frozen=True)
class UserItemBiasConfig:
    """``reg``: ridge penalty on a user bias (pseudo-ratings at zero bias), in training and in fold-in;
    ``item_reg``: on an item bias (None = ``reg``); ``iterations``: ALS sweeps (user step, item step);
    ``item_bias_from_attributes``: give items unseen in training a bias predicted from their attributes
    (ridge regression of the trained biases on the sparse attribute design, penalty ``attribute_reg``)
    instead of 0; ``use_trained_users``: for a task whose user was seen in training, fold in with that
    user's trained bias as the prior mean instead of 0. Defaults: chosen on the validation users of
    ML-100K and ML-1M (MeLU split, seed 0)."""

    reg: float = 5.0
    item_reg: float | None = 2.0
    iterations: int = 10
    item_bias_from_attributes: bool = False
    attribute_reg: float = 10.0
    use_trained_users: bool = True

    def __post_init__(self) -> None:
        if self.reg <= 0 or (self.item_reg is not None and self.item_reg <= 0) or self.attribute_reg <= 0:
            raise ValueError("reg, item_reg and attribute_reg must be > 0")
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")


class UserItemBias(BaselineBase):
    """``mu + b_u + b_i``: biases by regularised ALS on the training ratings; a test user's ``b_u`` is
    folded in from the support set in closed form, ``b_u = sum(r - mu - b_i) / (reg + n)``."""

    name = "user_item_bias"

    def __init__(self, config: UserItemBiasConfig | None = None) -> None:
        self.config = config or UserItemBiasConfig()
        self._stats: TrainStats | None = None
        self.user_bias: np.ndarray | None = None  # [n_users], 0 for users not in training
        self.item_bias: np.ndarray | None = None  # [n_items], for every catalogue item (new ones: 0 or predicted)

    def fit(self, split: ColdStartSplit) -> "UserItemBias":
        s = self._stats = train_stats(split)
        cfg = self.config
        item_reg = cfg.reg if cfg.item_reg is None else cfg.item_reg
        resid = s.rating - s.global_mean
        b_u = np.zeros(s.n_users)
        b_i = np.zeros(s.n_items)
        for _ in range(cfg.iterations):
            b_u = np.bincount(s.user, weights=resid - b_i[s.item], minlength=s.n_users) / (cfg.reg + s.user_count)
            b_i = np.bincount(s.item, weights=resid - b_u[s.user], minlength=s.n_items) / (item_reg + s.item_count)
        if cfg.item_bias_from_attributes:
            design = item_design(split).matrix
            known = np.flatnonzero(s.known_items)
            intercept, coef = ridge_fit(design[known], b_i[known], cfg.attribute_reg)
            new = np.flatnonzero(~s.known_items)
            b_i[new] = intercept + design[new] @ coef
        self.user_bias, self.item_bias = b_u, b_i
        return self

    def fold_in(self, tasks: TaskSet) -> np.ndarray:
        """Each task's user bias from its support set (closed form, same ``reg`` as training)."""
        assert self.item_bias is not None and self.user_bias is not None
        s, reg = self.stats, self.config.reg
        t = tasks.support_task
        resid = tasks.support_rating.astype(np.float64) - s.global_mean - self.item_bias[tasks.support_item]
        total = np.bincount(t, weights=resid, minlength=len(tasks))
        prior = np.zeros(len(tasks))
        if self.config.use_trained_users:
            known = self._known_user(tasks.user_idx)
            prior[known] = self.user_bias[tasks.user_idx[known]]
        return (total + reg * prior) / (reg + tasks.support_sizes)

    def _scores(self, tasks: TaskSet) -> np.ndarray:
        assert self.item_bias is not None
        b_u = self.fold_in(tasks)
        return self.stats.global_mean + b_u[tasks.query_task] + self.item_bias[tasks.query_item]

    def score_catalogue(self, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        """Every task's ``score_items`` over ``catalogue`` ([tasks, catalogue]): one batched fold-in, the
        same sum in the same order as ``_scores``."""
        assert self.item_bias is not None
        b_u = self.fold_in(tasks)
        return self.stats.global_mean + b_u[:, None] + self.item_bias[catalogue][None, :]

    def with_new_items(self, tasks: TaskSet, scale: float = 1.0, rounds: int = 3) -> "UserItemBias":
        """A copy whose items unseen in training have their bias folded in from every task's support
        ratings of them (the item-side fold-in): alternately each task's user bias, then each new item's
        ``b_i = (sum(r - mu - b_u) + lambda b_i0) / (lambda + n)`` around its attribute prior ``b_i0``,
        ``lambda`` = ``scale`` x the training item penalty. Trained items keep their biases."""
        s, cfg = self.stats, self.config
        lam = (cfg.reg if cfg.item_reg is None else cfg.item_reg) * scale
        task, item, rating = new_item_rows(tasks, s.known_items)
        out = copy.copy(self)
        prior = self.item_bias
        for _ in range(rounds if len(item) else 0):
            b_u = out.fold_in(tasks)
            total = np.bincount(item, weights=rating - s.global_mean - b_u[task], minlength=s.n_items)
            count = np.bincount(item, minlength=s.n_items)
            out.item_bias = np.where(count > 0, (total + lam * prior) / (lam + count), prior)
        return out
