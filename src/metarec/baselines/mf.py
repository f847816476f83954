"""Biased matrix factorisation by ALS, with closed-form fold-in for new users and attribute-predicted
factors for new items.

Why: it is the classical answer to "what can a user's few ratings tell us" - fix the item factors
learnt on the warm catalogue and solve the new user's bias and factors from the support set (a ridge
regression, exactly one ALS user step). The meta-learners must beat it to justify their cost.

New items (never rated in training) have no learnt factors; theirs are predicted from item attributes by
ridge regression from the items' **sparse** one-hot / multi-hot attribute design
(:mod:`metarec.baselines.attributes`) to the trained item factors and biases. The design is never made
dense: the regression is solved through the smaller of its primal or dual Gram matrix, or by LSMR
(:func:`metarec.linalg.ridge_fit`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from metarec.baselines.attributes import item_design
from metarec.baselines.base import BaselineBase, TrainStats, train_stats
from metarec.linalg import batched_ridge, group_matrix, pooled_item_ridge, ridge_fit
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet, new_item_rows


@dataclass(frozen=True)
class MatrixFactorizationConfig:
    """``factors``: latent dimension; ``reg``: ridge penalty on a user's / item's factors and ``bias_reg``
    on their biases (Gaussian prior precisions in rating units, the same in training and fold-in);
    ``iterations``: ALS sweeps; ``seed``/``init_std``: initial item factors; ``new_items_from_attributes``:
    predict new items' factors and biases from attributes (else 0), ridge penalty ``attribute_reg``;
    ``use_trained_users``: a task whose user was seen in training folds in around that user's trained
    parameters instead of 0. Defaults: chosen on the validation users of ML-100K and ML-1M (MeLU split,
    seed 0); with ``reg`` much above 10 the factors of a 5-rating user collapse to 0 (plain biases)."""

    factors: int = 20
    reg: float = 10.0
    bias_reg: float = 3.0
    iterations: int = 15
    seed: int = 0
    init_std: float = 0.1
    new_items_from_attributes: bool = True
    attribute_reg: float = 10.0
    use_trained_users: bool = True

    def __post_init__(self) -> None:
        if self.factors < 1 or self.iterations < 1:
            raise ValueError("factors and iterations must be >= 1")
        if self.reg <= 0 or self.bias_reg <= 0 or self.attribute_reg <= 0:
            raise ValueError("reg, bias_reg and attribute_reg must be > 0")


class MatrixFactorization(BaselineBase):
    """``mu + b_u + b_i + p_u . q_i`` by ALS; fold-in solves ``(b_u, p_u)`` from the support set with the
    item side fixed, batched over all tasks (one stacked ``(k+1) x (k+1)`` solve per task)."""

    name = "matrix_factorization"

    def __init__(self, config: MatrixFactorizationConfig | None = None) -> None:
        self.config = config or MatrixFactorizationConfig()
        self._stats: TrainStats | None = None
        self.user_params: np.ndarray | None = None  # [n_users, 1 + k]: bias, factors (0 if not in training)
        self.item_params: np.ndarray | None = None  # [n_items, 1 + k]: every catalogue item

    @property
    def penalty(self) -> np.ndarray:
        """The ridge precisions of [bias, factors] (training and fold-in)."""
        return np.r_[self.config.bias_reg, np.full(self.config.factors, self.config.reg)]

    def fit(self, split: ColdStartSplit) -> "MatrixFactorization":
        s = self._stats = train_stats(split)
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        k = cfg.factors
        by_user = sp.csr_matrix((np.ones(len(s.user)), (s.user, s.item)), shape=(s.n_users, s.n_items))
        by_item = by_user.T.tocsr()
        users = np.zeros((s.n_users, 1 + k))
        items = np.zeros((s.n_items, 1 + k))
        items[:, 1:] = rng.normal(0.0, cfg.init_std, (s.n_items, k))
        resid = s.rating - s.global_mean
        penalty = self.penalty
        for _ in range(cfg.iterations):
            # User step: regress r - mu - b_i on [1, q_i]; the item side is fixed.
            target = sp.csr_matrix((resid - items[s.item, 0], (s.user, s.item)), shape=by_user.shape)
            users = batched_ridge(by_user, target, np.c_[np.ones(s.n_items), items[:, 1:]], penalty)
            target = sp.csr_matrix((resid - users[s.user, 0], (s.item, s.user)), shape=by_item.shape)
            items = batched_ridge(by_item, target, np.c_[np.ones(s.n_users), users[:, 1:]], penalty)
        items[~s.known_items] = 0.0
        if cfg.new_items_from_attributes and (~s.known_items).any():
            design = item_design(split).matrix
            known, new = np.flatnonzero(s.known_items), np.flatnonzero(~s.known_items)
            intercept, coef = ridge_fit(design[known], items[known], cfg.attribute_reg)
            items[new] = intercept + np.asarray(design[new] @ coef)
        users[~s.known_users] = 0.0
        self.user_params, self.item_params = users, items
        return self

    def fold_in(self, tasks: TaskSet) -> np.ndarray:
        """Each task's ``[b_u, p_u]`` (T x (1 + k)) from its support set, item parameters fixed."""
        assert self.item_params is not None and self.user_params is not None
        s = self.stats
        items = self.item_params
        resid = tasks.support_rating.astype(np.float64) - s.global_mean - items[tasks.support_item, 0]
        counts = group_matrix(tasks.support_ptr, tasks.support_item, None, s.n_items)
        target = group_matrix(tasks.support_ptr, tasks.support_item, resid, s.n_items)
        prior = np.zeros((len(tasks), items.shape[1]))
        if self.config.use_trained_users:
            known = self._known_user(tasks.user_idx)
            prior[known] = self.user_params[tasks.user_idx[known]]
        features = np.c_[np.ones(s.n_items), items[:, 1:]]
        return batched_ridge(counts, target, features, self.penalty, prior)

    def with_new_items(self, tasks: TaskSet, scale: float = 1.0, rounds: int = 3) -> "MatrixFactorization":
        """A copy whose items unseen in training have ``(b_i, q_i)`` folded in from every task's support
        ratings of them - one ALS item step over the pooled support sets, around the attribute-predicted
        parameters, with ``scale`` x the training penalty - alternating with the tasks' user fold-in
        (``rounds`` times). Trained items keep their parameters."""
        assert self.item_params is not None
        s = self.stats
        task, item, rating = new_item_rows(tasks, s.known_items)
        out = copy.copy(self)
        prior = self.item_params[np.unique(item)]
        for _ in range(rounds if len(item) else 0):
            users = out.fold_in(tasks)
            rows, solved = pooled_item_ridge(task, item, rating - s.global_mean - users[task, 0],
                                             np.c_[np.ones(len(tasks)), users[:, 1:]], self.penalty * scale, prior)
            out.item_params = self.item_params.copy()
            out.item_params[rows] = solved
        return out

    def _scores(self, tasks: TaskSet) -> np.ndarray:
        assert self.item_params is not None
        user = self.fold_in(tasks)[tasks.query_task]
        item = self.item_params[tasks.query_item]
        return self.stats.global_mean + user[:, 0] + item[:, 0] + np.einsum("nk,nk->n", user[:, 1:], item[:, 1:])

    def score_catalogue(self, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        """Every task's ``score_items`` over ``catalogue`` ([tasks, catalogue]): one batched fold-in and
        one matrix product instead of a fold-in and a gather per user."""
        assert self.item_params is not None
        user, item = self.fold_in(tasks), self.item_params[catalogue]
        return self.stats.global_mean + user[:, :1] + item[:, 0][None, :] + user[:, 1:] @ item[:, 1:].T
