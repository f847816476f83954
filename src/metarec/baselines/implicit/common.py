"""The contract every implicit-feedback baseline implements, and the input checks and sparse helpers they share.

Implicit data is a set of positives: each (user, item) interaction comes with a confidence (1.0 for plain
binary data, more for stronger signals such as play counts; see :func:`metarec.data.implicit.to_implicit`).
A baseline is fitted on the training users' interactions and then scores the whole catalogue for users it
has never seen, from their few known positives (the cold-start call). Items the user already has are
*not* masked here: the caller excludes them, so every baseline returns a full, comparable row.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import scipy.sparse as sp

from metarec.errors import ConfigError, DataError

C = TypeVar("C")


@runtime_checkable
class ImplicitBaseline(Protocol):
    """What an implicit-feedback baseline provides (see the module docstring)."""

    name: str

    def fit(self, user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int) -> "ImplicitBaseline":
        """Training interactions (int64 user index, int64 item index in [0, n_items), float confidence > 0)
        of the training users only. Repeated (user, item) pairs are merged, their confidences summed."""
        ...

    def score(self, support_ptr: np.ndarray, support_item: np.ndarray, support_confidence: np.ndarray) -> np.ndarray:
        """Scores float32 [B, n_items] for B users new to the model, user b's known positives being
        ``support_item[support_ptr[b]:support_ptr[b+1]]`` (CSR). A user with no positive gets the
        non-personal popularity row. Higher = recommend first; support items are not masked."""
        ...


def make_config(kind: type[C], config: C | None, params: dict[str, Any]) -> C:
    """``config`` (or the defaults) with ``params`` overriding fields: lets a registry build a baseline from
    one grid entry, ``IMPLICIT_BASELINES[name](**params)``. An unknown field is a ConfigError."""
    base = kind() if config is None else config
    if not isinstance(base, kind):
        raise ConfigError(f"expected a {kind.__name__}, got {type(base).__name__}")
    if not params:
        return base
    known = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{kind.__name__} has no setting {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(base, **params)  # type: ignore[type-var]


def _indices(values: np.ndarray, field: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"must be a 1-D array, got shape {arr.shape}", field=field)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"must hold integer indices, got dtype {arr.dtype}", field=field)
    return arr.astype(np.int64, copy=False)


def _items(item: np.ndarray, n_items: int, field: str) -> np.ndarray:
    item = _indices(item, field)
    bad = (item < 0) | (item >= n_items)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise DataError(f"item index {int(item[at])} at position {at} is outside [0, {n_items})", field=field)
    return item


def _confidence(confidence: np.ndarray, n: int, field: str) -> np.ndarray:
    conf = np.asarray(confidence)
    if conf.ndim != 1 or len(conf) != n:
        raise DataError(f"must be a 1-D array of {n} values (one per interaction), got shape {conf.shape}", field=field)
    if conf.size and not (np.issubdtype(conf.dtype, np.number) or conf.dtype == bool):
        raise DataError(f"must hold numbers, got dtype {conf.dtype}", field=field)
    conf = conf.astype(np.float64, copy=False)
    bad = ~np.isfinite(conf) | (conf <= 0)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise DataError(f"confidence {conf[at]!r} at position {at} is not a finite number > 0 (1.0 = a plain positive)",
                        field=field)
    return conf


def check_n_items(n_items: int) -> int:
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise DataError(f"must be an integer >= 1, got {n_items!r}", field="n_items")
    return int(n_items)


def check_interactions(
    user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``fit``'s arguments as (int64, int64, float64, int), or a DataError naming the bad field."""
    n_items = check_n_items(n_items)
    user = _indices(user, "user")
    if (user < 0).any():
        at = int(np.flatnonzero(user < 0)[0])
        raise DataError(f"user index {int(user[at])} at position {at} is negative", field="user")
    item = _items(item, n_items, "item")
    if len(item) != len(user):
        raise DataError(f"has {len(item)} values for {len(user)} users (one per interaction)", field="item")
    if not len(user):
        raise DataError("no training interaction", field="user")
    return user, item, _confidence(confidence, len(user), "confidence"), n_items


def check_support(
    ptr: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``score``'s CSR arguments as (int64, int64, float64), or a DataError naming the bad field."""
    ptr = _indices(ptr, "support_ptr")
    item = _items(item, n_items, "support_item")
    if len(ptr) < 1 or ptr[0] != 0 or ptr[-1] != len(item) or (np.diff(ptr) < 0).any():
        raise DataError(f"must start at 0, never decrease and end at len(support_item) = {len(item)}",
                        field="support_ptr")
    return ptr, item, _confidence(confidence, len(item), "support_confidence")


def interactions(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR matrix with repeated (row, col) pairs summed and indices sorted."""
    m = sp.csr_matrix((np.asarray(values, dtype=np.float64), (rows, cols)), shape=shape)
    m.sum_duplicates()
    return m


def support_matrix(ptr: np.ndarray, item: np.ndarray, values: np.ndarray, n_items: int) -> sp.csr_matrix:
    """The support sets as a (B x n_items) CSR matrix, repeated items summed."""
    m = sp.csr_matrix((np.asarray(values, dtype=np.float64), item, ptr), shape=(len(ptr) - 1, n_items))
    m.sum_duplicates()
    return m


def popularity(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(count, score)`` from a users x items CSR matrix (duplicates summed): training users per item
    (int64), and that count as a float32 score (exact below 2^24 users). Equal counts tie: an item order
    would decide among the many zero-count items (every new item), and the evaluator scores ties fairly."""
    n_items = matrix.shape[1]
    count = np.bincount(matrix.indices, minlength=n_items).astype(np.int64)
    return count, count.astype(np.float32)


class PopularityFallback:
    """Shared plumbing: the popularity row fitted beside every baseline, given to users with no positive
    (their personal score would be a constant row, which ranks nothing)."""

    name: str = "implicit"
    _popularity: np.ndarray | None = None
    n_items: int = 0

    def _fit_popularity(self, matrix: sp.csr_matrix) -> None:
        self.n_items = matrix.shape[1]
        self.item_count, self._popularity = popularity(matrix)

    def _support(self, ptr: np.ndarray, item: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._popularity is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(user, item, confidence, n_items) first")
        return check_support(ptr, item, confidence, self.n_items)

    def _fill_empty(self, scores: np.ndarray, ptr: np.ndarray) -> np.ndarray:
        assert self._popularity is not None
        empty = np.diff(ptr) == 0
        if empty.any():
            scores[empty] = self._popularity
        return scores


def train_matrix(user: np.ndarray, item: np.ndarray, confidence: np.ndarray, n_items: int) -> sp.csr_matrix:
    """``fit``'s arguments, checked, as a users x items CSR matrix of summed confidences (float64); rows
    of user indices absent from training are empty."""
    user, item, confidence, n_items = check_interactions(user, item, confidence, n_items)
    return interactions(user, item, confidence, (int(user.max()) + 1, n_items))
