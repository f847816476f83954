"""Count- and neighbourhood-based implicit baselines: most popular, item-kNN (cosine) and EASE.

Why these three: popularity is the floor every top-N method must clear; item-kNN is the classic
"people who liked this also liked" model, which needs no training per user and so handles a new user's
first positives for free; EASE (Steck, 2019) is a closed-form item-item linear model that is, on the
standard top-N benchmarks, as strong as far more elaborate deep models. All three score a new user
directly from their support items, with no per-user fitting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from metarec.baselines.implicit.common import PopularityFallback, make_config, support_matrix, train_matrix
from metarec.errors import ConfigError

log = logging.getLogger(__name__)

# Bound on the entries of one dense block of item-item products (float64: ~64 MB).
_BLOCK_ENTRIES = 8_000_000


def _gram_blocks(by_item: sp.csr_matrix, by_user: sp.csr_matrix) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(a, b, rows a..b of X^T X as a dense array)``: the item-item co-occurrence matrix, one block of
    rows at a time, so it is never held sparse (whose indices would cost 4x a dense float32 matrix)."""
    n = by_item.shape[0]
    step = max(1, _BLOCK_ENTRIES // max(n, 1))
    for a in range(0, n, step):
        b = min(n, a + step)
        yield a, b, (by_item[a:b] @ by_user).toarray()


@dataclass(frozen=True)
class MostPopularConfig:
    """No settings: items ranked by how many training users have them."""


class MostPopular(PopularityFallback):
    """Every user gets the same row: items by number of training users (equal counts tie)."""

    name = "popularity"

    def __init__(self, config: MostPopularConfig | None = None, **params: Any) -> None:
        self.config = make_config(MostPopularConfig, config, params)

    def fit(self, user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int) -> "MostPopular":
        self._fit_popularity(train_matrix(user, item, confidence, n_items))
        return self

    def score(self, support_ptr: np.ndarray, support_item: np.ndarray, support_confidence: np.ndarray) -> np.ndarray:
        ptr, _, _ = self._support(support_ptr, support_item, support_confidence)
        assert self._popularity is not None
        return np.repeat(self._popularity[None, :], len(ptr) - 1, axis=0)


@dataclass(frozen=True)
class ItemKNNConfig:
    """``neighbours``: similarities kept per item (its most similar items; 0 or None = all);
    ``shrink``: added to the cosine's denominator, ``x_i.x_j / (|x_i| |x_j| + shrink)``, so a pair seen
    together by one user of two does not look as similar as a pair shared by hundreds;
    ``use_confidence``: build the vectors (and weight a user's support items) by confidence instead of 1."""

    neighbours: int | None = 100
    shrink: float = 0.0
    use_confidence: bool = False

    def __post_init__(self) -> None:
        if self.neighbours is not None and self.neighbours < 0:
            raise ConfigError(f"item-knn neighbours must be >= 0 (0 or None = all), got {self.neighbours}")
        if not self.shrink >= 0:
            raise ConfigError(f"item-knn shrink must be >= 0, got {self.shrink}")


class ItemKNN(PopularityFallback):
    """Item-item cosine similarity on the training users x items matrix, each item keeping its top
    ``neighbours``; a user's score for item v is the sum over their support items s of ``sim(s, v)``.
    The similarity matrix is sparse (``similarity``, n_items x n_items, zero diagonal)."""

    name = "item-knn"

    def __init__(self, config: ItemKNNConfig | None = None, **params: Any) -> None:
        self.config = make_config(ItemKNNConfig, config, params)
        self.similarity: sp.csr_matrix | None = None

    def fit(self, user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int) -> "ItemKNN":
        cfg = self.config
        by_user = train_matrix(user, item, confidence, n_items)
        self._fit_popularity(by_user)
        if not cfg.use_confidence:
            by_user.data[:] = 1.0
        by_item = by_user.T.tocsr()
        norm = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel())
        k = cfg.neighbours or n_items
        rows, cols, vals = [], [], []
        for a, b, block in _gram_blocks(by_item, by_user):
            denom = norm[a:b, None] * norm[None, :] + cfg.shrink
            block = np.divide(block, denom, out=np.zeros_like(block), where=denom > 0)
            block[np.arange(b - a), np.arange(a, b)] = 0.0  # an item is not its own neighbour
            if k < n_items:
                top = np.argpartition(-block, k - 1, axis=1)[:, :k]
                keep = np.zeros(block.shape, bool)
                np.put_along_axis(keep, top, True, axis=1)
                block[~keep] = 0.0
            r, c = np.nonzero(block > 0)
            rows.append(r + a)
            cols.append(c)
            vals.append(block[r, c])
        self.similarity = sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n_items, n_items),
        )
        log.debug("item-knn: %d similarities kept for %d items", self.similarity.nnz, n_items)
        return self

    def score(self, support_ptr: np.ndarray, support_item: np.ndarray, support_confidence: np.ndarray) -> np.ndarray:
        ptr, item, conf = self._support(support_ptr, support_item, support_confidence)
        assert self.similarity is not None
        weight = conf if self.config.use_confidence else np.ones(len(item))
        support = support_matrix(ptr, item, weight, self.n_items).astype(np.float32)
        scores = np.asarray((support @ self.similarity).toarray(), dtype=np.float32)
        return self._fill_empty(scores, ptr)


@dataclass(frozen=True)
class EASEConfig:
    """``l2``: ridge penalty on the item-item weights (Steck's lambda; larger for larger, denser data);
    ``max_items``: refuse catalogues above this size, since EASE holds a dense n_items^2 float32 matrix
    (20,000 items = 1.6 GB); ``use_confidence``: regress on confidences instead of 0/1."""

    l2: float = 500.0
    max_items: int = 20_000
    use_confidence: bool = False

    def __post_init__(self) -> None:
        if not self.l2 > 0:
            raise ConfigError(f"ease l2 must be > 0, got {self.l2}")
        if self.max_items < 1:
            raise ConfigError(f"ease max_items must be >= 1, got {self.max_items}")


class EASE(PopularityFallback):
    """Embarrassingly Shallow Autoencoder (Steck, 2019): ``B = argmin |X - XB|^2 + l2 |B|^2`` with
    ``diag(B) = 0``, in closed form ``B = I - P diag(1/diag(P))``, ``P = (X^T X + l2 I)^-1``; a user's
    score is ``x_u B``. ``weights`` is B (dense float32, n_items x n_items)."""

    name = "ease"

    def __init__(self, config: EASEConfig | None = None, **params: Any) -> None:
        self.config = make_config(EASEConfig, config, params)
        self.weights: np.ndarray | None = None

    def fit(self, user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int) -> "EASE":
        cfg = self.config
        if n_items > cfg.max_items:
            raise ConfigError(f"ease holds a dense n_items x n_items matrix: {n_items} items is above max_items "
                              f"= {cfg.max_items} (raise it if {4 * n_items ** 2 / 2 ** 30:.1f} GiB of memory is fine)")
        by_user = train_matrix(user, item, confidence, n_items)
        self._fit_popularity(by_user)
        if not cfg.use_confidence:
            by_user.data[:] = 1.0
        self.weights = None  # free the previous fit's matrix before making the next
        self.weights = ease_weights(by_user, cfg.l2)
        return self

    def score(self, support_ptr: np.ndarray, support_item: np.ndarray, support_confidence: np.ndarray) -> np.ndarray:
        ptr, item, conf = self._support(support_ptr, support_item, support_confidence)
        assert self.weights is not None
        weight = conf if self.config.use_confidence else np.ones(len(item))
        support = support_matrix(ptr, item, weight, self.n_items).astype(np.float32)
        scores = np.asarray(support @ self.weights, dtype=np.float32)
        return self._fill_empty(scores, ptr)


def ease_weights(by_user: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE's B from a users x items matrix, in one float32 n x n buffer: the Gram matrix is written into
    it block by block, then Cholesky-factored and inverted in place (LAPACK potrf/potri), mirrored, and
    scaled column by column - no second n x n copy at any point."""
    n = by_user.shape[1]
    by_item = by_user.T.tocsr()
    gram = np.zeros((n, n), np.float32)
    for a, b, block in _gram_blocks(by_item, by_user):
        gram[a:b] = block
    gram[np.diag_indices(n)] += np.float32(l2)
    # gram is symmetric, so its transpose is the same matrix in the Fortran order LAPACK overwrites in place.
    factor, info = lapack.spotrf(gram.T, lower=1, overwrite_a=1, clean=0)
    if info == 0:
        p, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise ConfigError(f"ease: X^T X + l2 I is not positive definite in float32 (LAPACK info {info}); raise l2 = {l2}")
    step = max(1, _BLOCK_ENTRIES // max(n, 1))
    for a in range(0, n, step):  # potri fills the lower triangle: mirror it, block by block
        b = min(n, a + step)
        p[:a, a:b] = p[a:b, :a].T
        diag = np.tril(p[a:b, a:b])
        p[a:b, a:b] = diag + np.tril(diag, -1).T
    weights = p.T  # P is symmetric: the same matrix, C-contiguous, so scoring reads B's rows contiguously
    scale = -1.0 / np.diag(weights).copy()
    weights *= scale[None, :]  # B_ij = -P_ij / P_jj
    weights[np.diag_indices(n)] = 0.0
    return weights
