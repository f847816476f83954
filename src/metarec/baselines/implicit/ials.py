"""Implicit ALS (Hu, Koren and Volinsky, 2008): matrix factorisation of confidence-weighted binary preferences.

Why: it is the standard latent-factor model for implicit feedback, and its user step is a closed-form
weighted ridge regression against fixed item factors - so a user never seen in training is *folded in*
from their support positives with exactly the solve training used (the implicit counterpart of
:class:`metarec.baselines.mf.MatrixFactorization`'s fold-in). A meta-learner has to beat this to justify
learning how to adapt.

Objective: ``sum_{u,i} c_ui (p_ui - x_u.y_i)^2 + reg (|x_u|^2 + |y_i|^2)`` over *all* pairs, ``p_ui = 1``
and ``c_ui = 1 + alpha * confidence`` for an observed pair, ``p_ui = 0`` and ``c_ui = 1`` otherwise. With
the other side fixed, each row solves ``(Y^T Y + Y_u^T (C_u - I) Y_u + reg I) x_u = Y_u^T C_u p_u``: the
``Y^T Y`` term is shared, so a solve costs only the user's own positives. Rows are solved in padded
batches (users sorted by their number of positives) with one stacked Cholesky solve per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from metarec.baselines.implicit.common import PopularityFallback, make_config, support_matrix, train_matrix
from metarec.errors import ConfigError

log = logging.getLogger(__name__)

# Bound on the float32 entries of one padded batch's gathered factors (B x L x k) and Gram matrices (B x k x k).
_BATCH_ENTRIES = 4_000_000


@dataclass(frozen=True)
class IALSConfig:
    """``factors``: latent dimension; ``reg``: ridge penalty on every user's and item's factors (the same
    in training and fold-in); ``alpha``: how much more an observed positive weighs than an unobserved
    pair (``c = 1 + alpha * confidence``); ``iterations``: ALS sweeps (item step then user step, so the
    stored user factors are exactly the fold-in of their rows against the final item factors);
    ``seed``/``init_std``: the initial user factors; ``device``: where torch solves ("cpu", "cuda")."""

    factors: int = 64
    reg: float = 0.1
    alpha: float = 10.0
    iterations: int = 15
    seed: int = 0
    init_std: float = 0.01
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.factors < 1 or self.iterations < 1:
            raise ConfigError(f"ials factors and iterations must be >= 1, got {self.factors} and {self.iterations}")
        if not self.reg > 0 or not self.alpha >= 0 or not self.init_std > 0:
            raise ConfigError(f"ials needs reg > 0, alpha >= 0 and init_std > 0, got {self.reg}, {self.alpha}, {self.init_std}")


class _Rows:
    """The rows of a CSR matrix (one per user, or per item), grouped once into padded batches of rows with
    similar numbers of entries: ``(rows, index [B, L], weight [B, L])`` tensors, padding at weight 0."""

    def __init__(self, matrix: sp.csr_matrix, factors: int, device: torch.device) -> None:
        self.n_rows = matrix.shape[0]
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        length = np.diff(matrix.indptr)
        order = np.argsort(length, kind="stable")
        order = order[length[order] > 0]  # rows with no entry solve to 0: left out
        max_rows = max(1, _BATCH_ENTRIES // (factors * factors))
        start = 0
        while start < len(order):
            stop = min(len(order), start + max_rows)
            size = np.arange(1, stop - start + 1) * length[order[start:stop]] * factors
            stop = start + max(1, int(np.searchsorted(size, _BATCH_ENTRIES, side="right")))
            rows = order[start:stop]
            width = int(length[rows].max())
            pos = matrix.indptr[rows][:, None] + np.arange(width)[None, :]
            valid = np.arange(width)[None, :] < length[rows][:, None]
            pos = np.where(valid, pos, 0)
            index = np.where(valid, matrix.indices[pos], 0)
            weight = np.where(valid, matrix.data[pos], 0.0)
            self.batches.append(tuple(torch.as_tensor(a).to(device) for a in (  # type: ignore[arg-type]
                rows.astype(np.int64), index.astype(np.int64), weight.astype(np.float32))))
            start = stop


def solve_rows(rows: _Rows, other: torch.Tensor, reg: float, alpha: float) -> torch.Tensor:
    """One ALS half-step: every row's factors against the fixed factors ``other`` ([n_other, k]), the
    rows' confidences being their batches' weights. Rows without entries get 0."""
    k = other.shape[1]
    out = torch.zeros(rows.n_rows, k, dtype=other.dtype, device=other.device)
    base = other.T @ other + reg * torch.eye(k, dtype=other.dtype, device=other.device)
    for row, index, confidence in rows.batches:
        gathered = other[index]  # [B, L, k]
        c = 1.0 + alpha * confidence  # c_ui on observed entries; padding is masked below
        observed = (confidence > 0).to(other.dtype)
        lhs = base + (gathered * ((c - 1.0) * observed)[..., None]).transpose(1, 2) @ gathered
        rhs = (gathered * (c * observed)[..., None]).sum(dim=1)  # Y_u^T C_u p_u
        factor, info = torch.linalg.cholesky_ex(lhs)  # SPD (reg > 0): twice as fast as a general solve
        solved = torch.cholesky_solve(rhs[..., None], factor)[..., 0]
        bad = info != 0  # float32 round-off on an ill-conditioned system: fall back to LU there
        if bool(bad.any()):
            solved[bad] = torch.linalg.solve(lhs[bad], rhs[bad][..., None])[..., 0]
        out[row] = solved
    return out


class IALS(PopularityFallback):
    """iALS trained on the training users; ``score`` folds each new user in (one user step against the
    trained item factors) and ranks items by ``x_u . y_i``. After ``fit``: ``item_factors`` [n_items, k]
    and ``user_factors`` [n_users, k] (float32 numpy; indexed by the training user index, rows of users
    without interactions 0)."""

    name = "ials"

    def __init__(self, config: IALSConfig | None = None, **params: Any) -> None:
        self.config = make_config(IALSConfig, config, params)
        self.item_factors: np.ndarray | None = None
        self.user_factors: np.ndarray | None = None

    def fit(self, user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int) -> "IALS":
        cfg = self.config
        by_user = train_matrix(user, item, confidence, n_items)
        self._fit_popularity(by_user)
        device = torch.device(cfg.device)
        users = _Rows(by_user, cfg.factors, device)
        items = _Rows(by_user.T.tocsr(), cfg.factors, device)
        rng = np.random.default_rng(cfg.seed)
        init = rng.normal(0.0, cfg.init_std, (by_user.shape[0], cfg.factors)).astype(np.float32)
        init[np.diff(by_user.indptr) == 0] = 0.0  # users without positives must not enter Y^T Y
        x = torch.as_tensor(init).to(device)
        for it in range(cfg.iterations):
            y = solve_rows(items, x, cfg.reg, cfg.alpha)
            x = solve_rows(users, y, cfg.reg, cfg.alpha)
            log.debug("ials: sweep %d of %d done", it + 1, cfg.iterations)
        self.item_factors = y.cpu().numpy()
        self.user_factors = x.cpu().numpy()
        return self

    def fold_in(self, support_ptr: np.ndarray, support_item: np.ndarray, support_confidence: np.ndarray) -> np.ndarray:
        """New users' factors [B, k] (float32): the training user step, against the trained item factors.
        A user with no positive gets 0."""
        ptr, item, conf = self._support(support_ptr, support_item, support_confidence)
        assert self.item_factors is not None
        cfg = self.config
        device = torch.device(cfg.device)
        rows = _Rows(support_matrix(ptr, item, conf, self.n_items), cfg.factors, device)
        y = torch.as_tensor(self.item_factors).to(device)
        return solve_rows(rows, y, cfg.reg, cfg.alpha).cpu().numpy()

    def score(self, support_ptr: np.ndarray, support_item: np.ndarray, support_confidence: np.ndarray) -> np.ndarray:
        x = self.fold_in(support_ptr, support_item, support_confidence)
        assert self.item_factors is not None
        scores = np.ascontiguousarray(x @ self.item_factors.T, dtype=np.float32)
        return self._fill_empty(scores, np.asarray(support_ptr, dtype=np.int64))
