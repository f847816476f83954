"""How each attribute column is encoded: one categorical value, a list of values, or a bucketised number."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from metarec.errors import ConfigError

AttributeKind = Literal["categorical", "multi", "numeric", "text"]
KINDS: tuple[str, ...] = ("categorical", "multi", "numeric", "text")


@dataclass(frozen=True)
class AttributeSpec:
    """Encoding of one attribute column.

    ``categorical``: one value per row (gender, occupation); ``multi``: a list of values per row
    (genres, actors, tags), fed to an ``EmbeddingBag``; ``numeric``: a number cut into ``buckets``
    quantile buckets fitted on training rows (or explicit ``bins``); ``text``: kept as metadata
    (titles), never fed to a model.
    """

    kind: AttributeKind
    buckets: int = 8
    bins: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"attribute kind must be one of {KINDS}, got {self.kind!r}")
        if self.buckets < 1:
            raise ConfigError(f"buckets must be >= 1, got {self.buckets}")

    def to_json(self) -> dict:
        return {"kind": self.kind, "buckets": self.buckets, "bins": None if self.bins is None else list(self.bins)}

    @classmethod
    def from_json(cls, obj: Mapping) -> "AttributeSpec":
        bins = obj.get("bins")
        return cls(kind=obj["kind"], buckets=int(obj.get("buckets", 8)), bins=None if bins is None else tuple(bins))


def _is_listlike(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def looks_like_id(name: object) -> bool:
    """A column name such as ``author_id``, ``publisherId``, ``brand id`` or ``id``."""
    text = str(name)
    return bool(re.search(r"(^|[_\-\s])id$", text, re.IGNORECASE) or re.search(r"[a-z](Id|ID)$", text))


def infer_kind(column: pd.Series) -> AttributeKind:
    """Guess a column's kind from its dtype: lists -> multi, numbers -> numeric, anything else -> categorical.

    Integer-valued numbers in a column named like an id (``author_id``, ``publisherId``) are codes, not
    quantities: categorical. Any other guess can be overridden per column."""
    non_null = column.dropna()
    if len(non_null) and _is_listlike(non_null.iloc[0]):
        return "multi"
    if pd.api.types.is_bool_dtype(column):
        return "categorical"
    if pd.api.types.is_numeric_dtype(column):
        values = non_null.to_numpy(dtype=np.float64) if len(non_null) else np.zeros(0)
        if looks_like_id(column.name) and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return "categorical"
        return "numeric"
    return "categorical"


def infer_schema(
    frame: pd.DataFrame, overrides: Mapping[str, AttributeSpec | str] | None = None
) -> dict[str, AttributeSpec]:
    """A spec for every column of ``frame``: the inferred kind unless ``overrides`` names the column."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(frame.columns)
    if unknown:
        raise ConfigError(f"schema override names columns that are not in the table: {sorted(unknown)}")
    schema: dict[str, AttributeSpec] = {}
    for name in frame.columns:
        given = overrides.get(name)
        if isinstance(given, AttributeSpec):
            schema[name] = given
        elif isinstance(given, str):
            schema[name] = AttributeSpec(kind=given)  # type: ignore[arg-type]
        else:
            schema[name] = AttributeSpec(kind=infer_kind(frame[name]))
    return schema
