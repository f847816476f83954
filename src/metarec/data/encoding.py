"""Attributes -> integer tensors for embeddings, fitted on training rows only.

Single-valued columns (categorical, or numeric cut into buckets) become one index per row; multi-valued
columns become padded index lists for ``EmbeddingBag`` (index 0 is padding, never a dense multi-hot).
A value never seen while fitting maps to the column's "unknown" index instead of failing, so a new item
with a new director still gets a vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from metarec.data.schema import AttributeSpec

UNKNOWN = 0  # single-valued: missing or unseen value
PAD = 0  # multi-valued: padding slot, ignored by EmbeddingBag
MULTI_UNKNOWN = 1  # multi-valued: an unseen value


@dataclass(frozen=True)
class FeatureTable:
    """Encoded attributes of ``n`` users or items: ``single[col]`` is ``[n]``, ``multi[col]`` is ``[n, L]``.

    ``rows`` is ``n`` itself, so a table without any attribute column (an id-only dataset) still knows how
    many users or items it describes."""

    single: Mapping[str, torch.Tensor]
    multi: Mapping[str, torch.Tensor]
    rows: int | None = None

    def __len__(self) -> int:
        for tensor in (*self.single.values(), *self.multi.values()):
            return int(tensor.shape[0])
        return int(self.rows or 0)

    def select(self, index: torch.Tensor) -> "FeatureTable":
        return FeatureTable({k: v[index] for k, v in self.single.items()}, {k: v[index] for k, v in self.multi.items()},
                            int(index.shape[0]) if index.dim() else 1)

    def to(self, device: torch.device | str) -> "FeatureTable":
        return FeatureTable({k: v.to(device) for k, v in self.single.items()}, {k: v.to(device) for k, v in self.multi.items()},
                            self.rows)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Flat name -> tensor map, for safetensors (``{prefix}.rows``: the row count)."""
        out = {f"{prefix}.single.{k}": v.contiguous() for k, v in self.single.items()}
        out.update({f"{prefix}.multi.{k}": v.contiguous() for k, v in self.multi.items()})
        out[f"{prefix}.rows"] = torch.tensor([len(self)], dtype=torch.long)
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str) -> "FeatureTable":
        single = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{prefix}.single.")}
        multi = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{prefix}.multi.")}
        rows = tensors.get(f"{prefix}.rows")
        return cls(single, multi, None if rows is None else int(rows[0]))


@dataclass(frozen=True)
class ColumnEncoding:
    """How one column maps to indices: a value list (categorical / multi) or bucket edges (numeric)."""

    name: str
    kind: str
    values: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    max_len: int = 0

    @property
    def cardinality(self) -> int:
        """Rows of the embedding table this column needs (index 0 included)."""
        if self.kind == "numeric":
            return len(self.edges) + 2  # 0 = missing, 1..len(edges)+1 = buckets
        if self.kind == "multi":
            return len(self.values) + 2  # 0 = pad, 1 = unknown
        return len(self.values) + 1  # 0 = unknown

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "values": list(self.values), "edges": list(self.edges),
                "max_len": self.max_len}

    @classmethod
    def from_json(cls, obj: Mapping) -> "ColumnEncoding":
        return cls(obj["name"], obj["kind"], tuple(obj["values"]), tuple(float(e) for e in obj["edges"]),
                   int(obj["max_len"]))


@dataclass(frozen=True)
class FeatureEncoder:
    """Fitted encodings for every model-facing column of one attribute table."""

    columns: tuple[ColumnEncoding, ...] = field(default_factory=tuple)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        schema: Mapping[str, AttributeSpec],
        rows: Sequence[int] | np.ndarray | None = None,
        *,
        max_multi_len: int = 32,
        min_count: int = 1,
    ) -> "FeatureEncoder":
        """Learn value lists and bucket edges from ``frame`` (restricted to positional ``rows``)."""
        fit_frame = frame if rows is None else frame.iloc[np.asarray(rows)]
        columns = []
        for name, spec in schema.items():
            if spec.kind == "text" or name not in frame.columns:
                continue
            col = fit_frame[name]
            if spec.kind == "numeric":
                values = pd.to_numeric(col, errors="coerce").dropna().to_numpy(dtype=np.float64)
                if spec.bins is not None:
                    edges = tuple(float(b) for b in spec.bins)
                elif len(values):
                    qs = np.quantile(values, np.linspace(0, 1, spec.buckets + 1)[1:-1])
                    edges = tuple(float(q) for q in np.unique(qs))
                else:
                    edges = ()
                columns.append(ColumnEncoding(name, "numeric", edges=edges))
            elif spec.kind == "multi":
                counts: dict[str, int] = {}
                longest = 0
                for bag in col.dropna():
                    longest = max(longest, len(bag))
                    for value in bag:
                        counts[str(value)] = counts.get(str(value), 0) + 1
                kept = sorted(v for v, c in counts.items() if c >= min_count)
                columns.append(ColumnEncoding(name, "multi", values=tuple(kept), max_len=max(1, min(longest, max_multi_len))))
            else:
                counts = col.dropna().astype(str).value_counts()
                kept = sorted(counts[counts >= min_count].index)
                columns.append(ColumnEncoding(name, "categorical", values=tuple(kept)))
        return cls(tuple(columns))

    @property
    def cardinalities(self) -> dict[str, int]:
        return {c.name: c.cardinality for c in self.columns}

    @property
    def single_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.kind != "multi"]

    @property
    def multi_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "multi"]

    def transform(self, frame: pd.DataFrame) -> FeatureTable:
        """Encode every row of ``frame``; missing columns and values map to the unknown index."""
        n = len(frame)
        single: dict[str, torch.Tensor] = {}
        multi: dict[str, torch.Tensor] = {}
        for column in self.columns:
            raw = frame[column.name] if column.name in frame.columns else pd.Series([None] * n, index=frame.index)
            if column.kind == "numeric":
                values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
                idx = np.searchsorted(np.asarray(column.edges, dtype=np.float64), values, side="right") + 1
                idx[~np.isfinite(values)] = UNKNOWN
                single[column.name] = torch.as_tensor(idx, dtype=torch.long)
            elif column.kind == "multi":
                lookup = {v: i + 2 for i, v in enumerate(column.values)}
                out = np.full((n, column.max_len), PAD, dtype=np.int64)
                for r, bag in enumerate(raw.to_numpy()):
                    if bag is None or (isinstance(bag, float) and np.isnan(bag)):
                        continue
                    codes = [lookup.get(str(v), MULTI_UNKNOWN) for v in bag][: column.max_len]
                    out[r, : len(codes)] = codes
                multi[column.name] = torch.as_tensor(out)
            else:
                lookup = {v: i + 1 for i, v in enumerate(column.values)}
                idx = np.fromiter(
                    (UNKNOWN if _missing(v) else lookup.get(str(v), UNKNOWN) for v in raw.to_numpy()),
                    dtype=np.int64, count=n,
                )
                single[column.name] = torch.as_tensor(idx)
        return FeatureTable(single, multi, n)

    def transform_record(self, record: Mapping[str, object] | None) -> FeatureTable:
        """Encode one entity given as ``{column: value}`` (a served new user's attributes)."""
        row = {c.name: [(record or {}).get(c.name)] for c in self.columns}
        return self.transform(pd.DataFrame(row))

    def to_json(self) -> list[dict]:
        return [c.to_json() for c in self.columns]

    @classmethod
    def from_json(cls, obj: Iterable[Mapping]) -> "FeatureEncoder":
        return cls(tuple(ColumnEncoding.from_json(c) for c in obj))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA
