"""Vocabularies: external ids (strings, as the dataset spells them) <-> contiguous internal indices."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from metarec.errors import UnknownIdError


class Vocabulary:
    """An ordered, immutable id <-> index map. External ids are ``*_id`` strings, internal ``*_idx`` ints."""

    __slots__ = ("_ids", "_index", "kind")

    def __init__(self, ids: Iterable[object], kind: str = "id") -> None:
        self._ids: tuple[str, ...] = tuple(str(i) for i in ids)
        self._index = {value: i for i, value in enumerate(self._ids)}
        if len(self._index) != len(self._ids):
            raise ValueError(f"{kind} vocabulary has duplicate ids")
        self.kind = kind

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return str(value) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._ids == other._ids

    def __hash__(self) -> int:
        return hash(self._ids)

    @property
    def ids(self) -> tuple[str, ...]:
        return self._ids

    def index(self, value: object) -> int:
        try:
            return self._index[str(value)]
        except KeyError:
            raise UnknownIdError(f"unknown {self.kind} {value!r}") from None

    def get(self, value: object, default: int = -1) -> int:
        return self._index.get(str(value), default)

    def indices(self, values: Sequence[object], *, strict: bool = True) -> np.ndarray:
        """Map many ids at once; unknown ids raise, or map to -1 when ``strict`` is False."""
        out = np.fromiter((self._index.get(str(v), -1) for v in values), dtype=np.int64, count=len(values))
        if strict and (out < 0).any():
            missing = [values[i] for i in np.flatnonzero(out < 0)[:5]]
            raise UnknownIdError(f"unknown {self.kind}(s): {missing}")
        return out

    def to_json(self) -> list[str]:
        return list(self._ids)
