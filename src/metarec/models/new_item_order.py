"""New items re-ordered by attribute similarity to the user's items, in the places the model gave them.

An item training never saw is known to a model only through its attributes, passed through the item
tower. On Last.fm an artist is described by a handful of tags, and the direct overlap of a new artist's
tags with the user's own artists ranks new artists better than the tower does. So a user's new items are
re-ordered by ``z(model score) + w z(similarity)`` (each standardised over the user's new items; similarity:
the mean attribute cosine to the user's items) and handed the model's own new-item scores in that order.
The set of scores new items get is the model's, so where new items stand against known ones, and every
known item's rank, are unchanged. ``w`` is chosen on validation users (the implicit benchmark's
meta-learner); the served model applies the same ``w`` to the same attribute vectors.

The attribute vectors are built from the model's own encoded item features (what a served model has, an
item added while serving included): a one-hot block per single-valued column (categorical, numeric
bucket), a multi-hot block per multi-valued one (IDF-weighted over the catalogue); unknown and padding
codes left out; each block, then each row, L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from metarec.data.encoding import MULTI_UNKNOWN, PAD, UNKNOWN, FeatureEncoder, FeatureTable


@dataclass(frozen=True)
class NewItemOrder:
    """``attributes`` [N, d] (rows L2-normalised), ``new_items`` [N] bool, ``weight`` w > 0."""

    attributes: sp.csr_matrix
    new_items: np.ndarray
    weight: float

    @classmethod
    def from_features(cls, features: FeatureTable, encoder: FeatureEncoder, known_items: np.ndarray,
                      weight: float) -> "NewItemOrder":
        return cls(attribute_matrix(features, encoder), ~np.asarray(known_items, dtype=bool), float(weight))

    def similarity(self, support_ptr: np.ndarray, support_item: np.ndarray) -> np.ndarray:
        """[B, N]: each item's mean cosine to the user's support items (CSR ``ptr`` / ``item``); 0 without any."""
        return np.asarray((self._profile(support_ptr, support_item) @ self.attributes.T).toarray(), dtype=np.float64)

    def _profile(self, support_ptr: np.ndarray, support_item: np.ndarray) -> sp.csr_matrix:
        """[B, d]: each user's mean support attribute vector."""
        n_users, n_items = len(support_ptr) - 1, self.attributes.shape[0]
        sizes = np.diff(support_ptr)
        weight = np.repeat(1.0 / np.maximum(sizes, 1), sizes)
        support = sp.csr_matrix((weight, (np.repeat(np.arange(n_users), sizes), support_item)),
                                shape=(n_users, n_items))
        return support @ self.attributes

    def apply(self, scores: np.ndarray, support_ptr: np.ndarray, support_item: np.ndarray) -> np.ndarray:
        """``scores`` [B, N] with each row's new items re-ordered (module docstring). Only the new items'
        similarities are computed (a served request: one sparse product against them)."""
        return _reorder(scores, self._new_similarity(support_ptr, support_item), self.new_columns, self.weight)

    def order_new_scores(self, new_scores: np.ndarray, support_ptr: np.ndarray, support_item: np.ndarray) -> np.ndarray:
        """:meth:`apply` given only the new items' scores [B, len(new_columns)] (the approximate top-k scores
        the new items alone, beside its index): the same scores, re-ordered the same way."""
        return _reorder(new_scores, self._new_similarity(support_ptr, support_item),
                        np.arange(len(self.new_columns)), self.weight)

    def _new_similarity(self, support_ptr: np.ndarray, support_item: np.ndarray) -> np.ndarray:
        profile = self._profile(support_ptr, support_item)
        return np.asarray((profile @ self._new_attributes_t).toarray(), dtype=np.float64)

    @cached_property
    def new_columns(self) -> np.ndarray:
        """The catalogue indices of the new items, ascending."""
        return np.flatnonzero(self.new_items)

    @cached_property
    def _new_attributes_t(self) -> sp.csc_matrix:
        return sp.csc_matrix(self.attributes[self.new_columns].T)


def trained_order(state: Mapping[str, Any] | None, features: FeatureTable, encoder: FeatureEncoder,
                  known_items: np.ndarray) -> "NewItemOrder | None":
    """The order a trained implicit model applies: the weight its checkpoint state keeps
    (``new_item_order.content_weight``, chosen on validation users) over its encoded item features. None
    when the weight is 0 or absent, or there is nothing to order (no attribute, no new item)."""
    weight = float(dict(state or {}).get("new_item_order", {}).get("content_weight", 0.0))
    if weight <= 0:
        return None
    order = NewItemOrder.from_features(features, encoder, known_items, weight)
    return order if order.attributes.shape[1] and order.new_items.any() else None


def reorder_new_items(scores: np.ndarray, similarity: np.ndarray, new_items: np.ndarray, weight: float) -> np.ndarray:
    """``scores`` [B, N] with each row's new items (``new_items`` [N] bool) re-ordered by
    ``z(scores) + weight * z(similarity)`` (z: standardised over the row's new items) and handed the row's
    own new-item scores in that order: the multiset of new-item scores, hence every known item's rank, is kept."""
    columns = np.flatnonzero(new_items)
    return _reorder(scores, np.asarray(similarity)[:, columns], columns, weight)


def _reorder(scores: np.ndarray, sim: np.ndarray, columns: np.ndarray, weight: float) -> np.ndarray:
    """:func:`reorder_new_items` with the new items' similarities ``sim`` [B, len(columns)] given."""
    out = np.array(scores, dtype=np.float32, copy=True)
    if not len(columns) or weight == 0:
        return out
    own = out[:, columns].astype(np.float64)
    sim = np.asarray(sim, dtype=np.float64)

    def z(x: np.ndarray) -> np.ndarray:
        spread = x.std(axis=1, keepdims=True)
        return (x - x.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)

    mixed = z(own) + weight * z(sim)
    order = np.argsort(mixed, axis=1, kind="stable")  # ascending: the lowest mix takes the lowest score; ties by index
    placed = np.empty_like(own)
    np.put_along_axis(placed, order, np.sort(own, axis=1), axis=1)
    out[:, columns] = placed.astype(np.float32)
    return out


def attribute_matrix(features: FeatureTable, encoder: FeatureEncoder) -> sp.csr_matrix:
    """[N, d] attribute vectors of encoded items (module docstring); a row with no known value is all zero."""
    n = len(features)
    blocks: list[sp.csr_matrix] = []
    for column in encoder.columns:
        if column.kind == "multi":
            codes = features.multi[column.name].cpu().numpy()
            rows, slots = np.nonzero((codes != PAD) & (codes != MULTI_UNKNOWN))
            values = codes[rows, slots]
            width = column.cardinality
            df = np.bincount(np.unique(rows * width + values) % width, minlength=width)
            weight = np.log((1.0 + n) / (1.0 + df))[values] + 1.0
            blocks.append(_normalised(sp.csr_matrix((weight, (rows, values)), shape=(n, width))))
        else:
            codes = features.single[column.name].cpu().numpy()
            rows = np.flatnonzero(codes != UNKNOWN)
            blocks.append(sp.csr_matrix((np.ones(len(rows)), (rows, codes[rows])), shape=(n, column.cardinality)))
    if not blocks:
        return sp.csr_matrix((n, 0))
    return _normalised(sp.csr_matrix(sp.hstack(blocks)))


def _normalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix.sum_duplicates()
    norm = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)) @ matrix)
