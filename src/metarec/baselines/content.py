"""Content-based baseline: a user profile over item attributes, learnt from the support set.

Why: it is the cold-start method that needs no collaborative signal about the item, so it is the
natural yardstick on *new items*, and it shows how much of a user's taste the item attributes can carry.

Model (``z_i`` = ``[1, item attributes]``, the intercept being the user's bias)::

    population weights  w0  = ridge regression of training ratings (centred on the global mean) on the
                              sparse attribute design, pooled over all meta-train users
    item baseline       base_i = mu + (sum_train(r - mu) + damping * x_i . w0) / (n_i + damping)
                              i.e. the item's mean (centred on the global mean) damped toward what the
                              population's weights predict; for an item training never saw, mu + x_i . w0
    user profile        w_u = w0 + d_u,  d_u = ridge regression of the support residuals r - base_i on
                              z_i, prior N(0, 1/reg) (1/bias_reg for the intercept): the profile starts at
                              the population's weights and the support moves it
    prediction          base_j + z_j . d_u

The per-user regression uses the ``max_features`` attribute values most frequent among training items
(as dense columns, so every user's system is small); the population regression uses all of them (sparse).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.baselines.attributes import item_design
from metarec.baselines.base import BaselineBase, TrainStats, train_stats
from metarec.linalg import batched_ridge, group_matrix, ridge_fit
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet


@dataclass(frozen=True)
class ContentBasedConfig:
    """``reg`` / ``bias_reg``: prior precision of a user's attribute weights / bias around the population's
    (pseudo-ratings); ``population_reg``: ridge penalty of the population weights; ``damping``: how many
    pseudo-ratings of the attribute prediction an item's mean gets; ``max_features``: attribute values in
    the per-user profile (most frequent first). Defaults: chosen on the validation users of ML-100K and
    ML-1M (MeLU split, seed 0)."""

    reg: float = 10.0
    bias_reg: float = 3.0
    population_reg: float = 10.0
    damping: float = 5.0
    max_features: int = 64

    def __post_init__(self) -> None:
        if self.reg <= 0 or self.bias_reg <= 0 or self.population_reg <= 0:
            raise ValueError("reg, bias_reg and population_reg must be > 0")
        if self.damping < 0 or self.max_features < 0:
            raise ValueError("damping and max_features must be >= 0")


class ContentBased(BaselineBase):
    """Per-user ridge profile over item attributes with a population prior (see the module docstring)."""

    name = "content_based"

    def __init__(self, config: ContentBasedConfig | None = None) -> None:
        self.config = config or ContentBasedConfig()
        self._stats: TrainStats | None = None
        self.item_base: np.ndarray | None = None  # [n_items]
        self.profile_features: np.ndarray | None = None  # [n_items, 1 + p']: intercept + kept attribute values
        self.feature_names: tuple[str, ...] = ()

    def fit(self, split: ColdStartSplit) -> "ContentBased":
        s = self._stats = train_stats(split)
        cfg = self.config
        design = item_design(split)
        x = design.matrix
        known = np.flatnonzero(s.known_items)
        n = s.item_count[known].astype(np.float64)
        centred_sum = s.item_sum - s.item_count * s.global_mean
        # Pooled least squares over ratings == weighted least squares on item means, weights = counts.
        intercept, coef = ridge_fit(x[known], centred_sum[known] / n, cfg.population_reg, weights=n)
        content = intercept + np.asarray(x @ coef)
        with np.errstate(invalid="ignore", divide="ignore"):
            damped = (centred_sum + cfg.damping * content) / (s.item_count + cfg.damping)
        self.item_base = s.global_mean + np.where(s.item_count > 0, damped, content)
        frequency = np.asarray((x[known] != 0).sum(axis=0)).ravel()
        order = np.argsort(-frequency, kind="stable")
        keep = np.sort(order[: cfg.max_features][frequency[order[: cfg.max_features]] > 0])
        self.profile_features = np.c_[np.ones(s.n_items), x[:, keep].toarray()]
        self.feature_names = ("<bias>", *(design.names[j] for j in keep))
        return self

    def fold_in(self, tasks: TaskSet) -> np.ndarray:
        """Each task's profile deviation ``d_u`` (T x (1 + p')) from its support set."""
        assert self.item_base is not None and self.profile_features is not None
        n_items = self.stats.n_items
        resid = tasks.support_rating.astype(np.float64) - self.item_base[tasks.support_item]
        counts = group_matrix(tasks.support_ptr, tasks.support_item, None, n_items)
        target = group_matrix(tasks.support_ptr, tasks.support_item, resid, n_items)
        d = self.profile_features.shape[1]
        penalty = np.r_[self.config.bias_reg, np.full(d - 1, self.config.reg)]
        return batched_ridge(counts, target, self.profile_features, penalty)

    def _scores(self, tasks: TaskSet) -> np.ndarray:
        assert self.item_base is not None and self.profile_features is not None
        profile = self.fold_in(tasks)[tasks.query_task]
        z = self.profile_features[tasks.query_item]
        return self.item_base[tasks.query_item] + np.einsum("nd,nd->n", profile, z)

    def score_catalogue(self, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        """Every task's ``score_items`` over ``catalogue`` ([tasks, catalogue]): one batched fold-in and
        one matrix product instead of a fold-in and a gather per user."""
        assert self.item_base is not None and self.profile_features is not None
        profile = self.fold_in(tasks)
        return self.item_base[catalogue][None, :] + profile @ self.profile_features[catalogue].T
