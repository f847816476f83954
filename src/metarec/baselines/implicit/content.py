"""Content-based item-kNN: items known by their attributes, not their interactions.

Every other implicit baseline learns an item only from who interacted with it, so an item no training user
has seen (the "new users on new items" scenario) gets a chance-level score from all of them. This one
compares items by attribute vectors (genres, year bucket, category, ...), which every item has from day
one: a user's score for item v is the mean over their support items s of ``cosine(a_s, a_v)``, plus an
optional popularity prior ``beta * log1p(count_v) / max log1p(count)`` (0 for an item training never saw).
The mean rather than the sum keeps ``beta``'s weight the same for a user with 1 or 20 support items; the
ranking at ``beta = 0`` is the sum's. :func:`item_attribute_matrix` builds the attribute matrix from an
items table and its schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from metarec.baselines.implicit.common import PopularityFallback, make_config, support_matrix, train_matrix
from metarec.data.schema import AttributeSpec
from metarec.errors import ConfigError, DataError


@dataclass(frozen=True)
class ContentKNNConfig:
    """``beta``: weight of the popularity prior (``log1p(count) / max``, in [0, 1]) added to the mean
    cosine (also in [0, 1] for non-negative attributes); ``use_confidence``: weight a user's support items
    by confidence instead of 1."""

    beta: float = 0.0
    use_confidence: bool = False

    def __post_init__(self) -> None:
        if not (np.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"content beta must be a finite number >= 0, got {self.beta}")


def _check_attributes(attributes: Any) -> sp.csr_matrix:
    if attributes is None:
        raise ConfigError("content needs the item attribute matrix: ContentKNN(attributes=...) or .with_items(...)")
    if sp.issparse(attributes):
        matrix = sp.csr_matrix(attributes, dtype=np.float64)
    else:
        arr = np.asarray(attributes)
        if arr.ndim != 2:
            raise DataError(f"must be a 2-D [n_items, d] matrix, got shape {arr.shape}", field="attributes")
        if arr.size and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise DataError(f"must hold numbers, got dtype {arr.dtype}", field="attributes")
        matrix = sp.csr_matrix(arr.astype(np.float64))
    if matrix.shape[1] < 1:
        raise DataError(f"has no attribute column (shape {matrix.shape})", field="attributes")
    if not np.isfinite(matrix.data).all():
        raise DataError("holds a NaN or infinite value", field="attributes")
    return matrix


class ContentKNN(PopularityFallback):
    """Attribute-cosine item-kNN (see the module docstring). ``attributes``: dense or scipy-sparse
    [n_items, d], row i the attributes of item index i (an all-zero row: similar to nothing); given here or
    through :meth:`with_items`, before ``fit``."""

    name = "content"

    def __init__(self, config: ContentKNNConfig | None = None, attributes: Any = None, **params: Any) -> None:
        self.config = make_config(ContentKNNConfig, config, params)
        self.attributes: sp.csr_matrix | None = None
        self.prior: np.ndarray | None = None
        if attributes is not None:
            self.with_items(attributes)

    def with_items(self, attributes: Any) -> "ContentKNN":
        """Set the item attribute matrix; its rows are L2-normalised, so products are cosines."""
        matrix = _check_attributes(attributes)
        norm = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        self.attributes = sp.csr_matrix(sp.diags(scale) @ matrix, dtype=np.float32)
        return self

    def fit(self, user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int) -> "ContentKNN":
        if self.attributes is None:
            _check_attributes(None)
        assert self.attributes is not None
        by_user = train_matrix(user, item, confidence, n_items)
        if self.attributes.shape[0] != by_user.shape[1]:
            raise DataError(f"has {self.attributes.shape[0]} rows for {by_user.shape[1]} items (one row per item)",
                            field="attributes")
        self._fit_popularity(by_user)
        logged = np.log1p(self.item_count.astype(np.float64))
        top = logged.max()
        self.prior = (logged / top if top > 0 else logged).astype(np.float32)
        return self

    def score(self, support_ptr: np.ndarray, support_item: np.ndarray, support_confidence: np.ndarray) -> np.ndarray:
        ptr, item, conf = self._support(support_ptr, support_item, support_confidence)
        assert self.attributes is not None and self.prior is not None
        weight = conf if self.config.use_confidence else np.ones(len(item))
        support = support_matrix(ptr, item, weight, self.n_items)
        total = np.asarray(support.sum(axis=1)).ravel()
        support = sp.diags(np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)) @ support
        profile = support.astype(np.float32) @ self.attributes  # B x d: the mean support attribute vector
        scores = np.asarray((profile @ self.attributes.T).toarray(), dtype=np.float32)
        if self.config.beta:
            scores += np.float32(self.config.beta) * self.prior[None, :]
        return self._fill_empty(scores, ptr)


def _block(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, width: int) -> sp.csr_matrix:
    """One attribute's block, each row L2-normalised (so every attribute an item has weighs the same)."""
    block = sp.csr_matrix((values, (rows, cols)), shape=(n_rows, width))
    block.sum_duplicates()
    norm = np.sqrt(np.asarray(block.multiply(block).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)) @ block)


def item_attribute_matrix(items: pd.DataFrame, schema: Mapping[str, AttributeSpec], idf: bool = True) -> sp.csr_matrix:
    """The [len(items), d] attribute matrix of an items table (rows in its order): a one-hot block per
    categorical column, a multi-hot block per multi-valued one (IDF-weighted when ``idf``), a one-hot of
    the quantile bucket (``spec.buckets``, or ``spec.bins``) per numeric one; text columns left out;
    a missing value is an all-zero block. Each block is L2-normalised per row. Uses every item's
    attributes, which are not interactions."""
    n = len(items)
    blocks: list[sp.csr_matrix] = []
    for column, spec in schema.items():
        if spec.kind == "text" or column not in items.columns:
            continue
        values = items[column].reset_index(drop=True)  # positional index: row i = item i
        if spec.kind == "multi":
            exploded = values.explode()
            exploded = exploded[exploded.notna()]
            rows = exploded.index.to_numpy(dtype=np.int64)
            codes, uniques = pd.factorize(exploded.astype(str))
            width = len(uniques)
            weight = np.ones(len(codes))
            if idf and width:
                df = np.bincount(codes, minlength=width)
                weight = np.log((1.0 + n) / (1.0 + df))[codes] + 1.0
            blocks.append(_block(rows, codes, weight, n, width))
            continue
        if spec.kind == "numeric":
            number = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            finite = np.isfinite(number)
            if spec.bins is not None:
                edges = np.asarray(spec.bins, dtype=np.float64)
            else:
                edges = np.unique(np.quantile(number[finite], np.linspace(0, 1, spec.buckets + 1)[1:-1])) \
                    if finite.any() else np.zeros(0)
            codes = np.searchsorted(edges, number, side="right")
            rows, width = np.flatnonzero(finite), len(edges) + 1
            blocks.append(_block(rows, codes[finite], np.ones(len(rows)), n, width))
            continue
        present = values.notna().to_numpy()
        codes = np.full(n, -1, np.int64)
        codes[present], uniques = pd.factorize(values[present].astype(str))
        rows = np.flatnonzero(codes >= 0)
        blocks.append(_block(rows, codes[rows], np.ones(len(rows)), n, max(1, len(uniques))))
    if not blocks:
        raise DataError("no categorical, multi-valued or numeric item attribute to compare items by",
                        field="item_schema")
    return sp.csr_matrix(sp.hstack(blocks))
