"""The interactions table with its user and item attribute tables, ids mapped to contiguous indices."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from metarec._io import atomic_dir, recover_dir, write_json
from metarec.data.schema import AttributeSpec, infer_schema
from metarec.data.vocab import Vocabulary
from metarec.errors import DataError

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["last", "mean", "error"]
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class RatingDataset:
    """Explicit ratings plus attributes; what every loader returns and every split consumes.

    ``ratings`` has columns ``user_id``, ``item_id`` (strings; Categoricals over the vocabularies when
    built by :meth:`from_columns`), ``rating`` (float32), ``timestamp`` (nullable Int64, unix seconds;
    missing stays missing), ``user_idx``, ``item_idx`` (int64, into the vocabularies). ``users`` /
    ``items`` are indexed by id, one row per vocabulary entry, in vocabulary order. Build it with
    :meth:`from_frames`, which validates and normalises (or :meth:`from_columns`, at scale).
    """

    name: str
    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    user_schema: Mapping[str, AttributeSpec]
    item_schema: Mapping[str, AttributeSpec]
    rating_scale: tuple[float, float] = (1.0, 5.0)
    meta: Mapping[str, object] = field(default_factory=dict)
    user_vocab: Vocabulary = field(init=False)
    item_vocab: Vocabulary = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_vocab", Vocabulary(self.users.index, kind="user_id"))
        object.__setattr__(self, "item_vocab", Vocabulary(self.items.index, kind="item_id"))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frames(
        cls,
        name: str,
        ratings: pd.DataFrame,
        users: pd.DataFrame | None = None,
        items: pd.DataFrame | None = None,
        *,
        user_schema: Mapping[str, AttributeSpec | str] | None = None,
        item_schema: Mapping[str, AttributeSpec | str] | None = None,
        rating_scale: tuple[float, float] | None = None,
        duplicates: DuplicatePolicy = "last",
        source: str | Path | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> "RatingDataset":
        """Validate and normalise raw frames.

        ``ratings`` needs ``user_id``, ``item_id``, ``rating`` and may have ``timestamp``. ``users`` /
        ``items`` are indexed by id (or have a ``user_id`` / ``item_id`` column). Duplicate (user, item)
        pairs follow ``duplicates``: ``last`` keeps the latest rating (by timestamp, then file order),
        ``mean`` averages them, ``error`` raises; the count goes to a warning.
        """
        where = str(source) if source is not None else name
        for column in ("user_id", "item_id", "rating"):
            if column not in ratings.columns:
                raise DataError(f"missing required column '{column}'", path=where, field=column)
        frame = pd.DataFrame(
            {
                "user_id": ratings["user_id"].astype(str).to_numpy(),
                "item_id": ratings["item_id"].astype(str).to_numpy(),
                "rating": pd.to_numeric(ratings["rating"], errors="coerce").astype("float64").to_numpy(),
            }
        )
        bad = ~np.isfinite(frame["rating"].to_numpy())
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"rating {ratings['rating'].iloc[row]!r} is not a finite number ({int(bad.sum())} such rows)",
                path=where, line=row + 1, field="rating",
            )
        if "timestamp" in ratings.columns:
            ts = pd.to_numeric(ratings["timestamp"], errors="coerce")
            frame["timestamp"] = ts.round().astype("Int64").array  # positional; stays nullable Int64
        else:
            frame["timestamp"] = pd.array([pd.NA] * len(frame), dtype="Int64")
        stored = frame["rating"].astype(np.float32)  # what the table keeps: the scale is that of these values
        if not np.isfinite(stored.to_numpy()).all():
            row = int(np.flatnonzero(~np.isfinite(stored.to_numpy()))[0])
            raise DataError(f"rating {frame['rating'].iloc[row]!r} is too large to store (float32)",
                            path=where, line=row + 1, field="rating")
        frame["rating"] = stored.astype(np.float64)
        if rating_scale is None:
            rating_scale = (float(frame["rating"].min()), float(frame["rating"].max())) if len(frame) else (1.0, 5.0)
            if len(frame) and rating_scale[0] == rating_scale[1]:
                raise DataError(f"every rating is {rating_scale[0]:g}: nothing to learn a scale from "
                                "(set rating_scale)", path=where, field="rating")
        low, high = rating_scale
        out = (frame["rating"] < low) | (frame["rating"] > high)
        if out.any():
            row = int(np.flatnonzero(out.to_numpy())[0])
            raise DataError(
                f"rating {frame['rating'].iloc[row]} is outside the scale [{low}, {high}]",
                path=where, line=row + 1, field="rating",
            )
        frame = _resolve_duplicates(frame, duplicates, where)

        users = _attribute_table(users, "user_id", frame["user_id"], where)
        items = _attribute_table(items, "item_id", frame["item_id"], where)
        uschema = infer_schema(users, user_schema)
        ischema = infer_schema(items, item_schema)

        user_index = pd.Index(users.index)
        item_index = pd.Index(items.index)
        frame["user_idx"] = user_index.get_indexer(frame["user_id"]).astype(np.int64)
        frame["item_idx"] = item_index.get_indexer(frame["item_id"]).astype(np.int64)
        frame["rating"] = frame["rating"].astype(np.float32)
        frame = frame.reset_index(drop=True)
        return cls(
            name=name, ratings=frame, users=users, items=items, user_schema=uschema, item_schema=ischema,
            rating_scale=(float(low), float(high)), meta=dict(meta or {}),
        )

    @classmethod
    def from_columns(
        cls,
        name: str,
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        rating: np.ndarray,
        users: pd.DataFrame,
        items: pd.DataFrame,
        *,
        timestamp: np.ndarray | None = None,
        timestamp_missing: np.ndarray | None = None,
        user_schema: Mapping[str, AttributeSpec | str] | None = None,
        item_schema: Mapping[str, AttributeSpec | str] | None = None,
        rating_scale: tuple[float, float] | None = None,
        source: str | Path | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> "RatingDataset":
        """Build from ratings already mapped to rows of ``users`` / ``items`` (indexed by id, or with a
        ``user_id`` / ``item_id`` column; one row per vocabulary entry, in vocabulary order).

        Why: :meth:`from_frames` keeps a Python string per id per rating, gigabytes at tens of millions
        of ratings. Here ``user_id`` / ``item_id`` are pandas Categoricals over the vocabularies (the same
        ids, 4 bytes a row) and every check is vectorised: indices in range, finite ratings on the scale,
        no duplicate (user, item) pair (``duplicates="error"``, as :meth:`load`). ``timestamp``: integer
        unix seconds, ``timestamp_missing`` a bool per row (None: none missing; no ``timestamp``: all).
        """
        where = str(source) if source is not None else name
        users = _attribute_table(users, "user_id", pd.Series([], dtype=object), where)
        items = _attribute_table(items, "item_id", pd.Series([], dtype=object), where)
        user_idx = np.asarray(user_idx, dtype=np.int64)
        item_idx = np.asarray(item_idx, dtype=np.int64)
        n = len(user_idx)
        if len(item_idx) != n or len(rating) != n or (timestamp is not None and len(timestamp) != n):
            raise DataError("user_idx, item_idx, rating and timestamp must have one entry per rating", path=where)
        for column, idx, size in (("user_idx", user_idx, len(users)), ("item_idx", item_idx, len(items))):
            bad = (idx < 0) | (idx >= size)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"{column} {idx[row]} is not a row of the {size}-row table", path=where,
                                line=row + 1, field=column)
        stored = np.asarray(rating, dtype=np.float32)
        bad = ~np.isfinite(stored)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"rating {rating[row]!r} is not a finite float32 ({int(bad.sum())} such rows)",
                            path=where, line=row + 1, field="rating")
        if rating_scale is None:
            rating_scale = (float(stored.min()), float(stored.max())) if n else (1.0, 5.0)
            if n and rating_scale[0] == rating_scale[1]:
                raise DataError(f"every rating is {rating_scale[0]:g}: nothing to learn a scale from "
                                "(set rating_scale)", path=where, field="rating")
        low, high = rating_scale
        out = (stored < low) | (stored > high)
        if out.any():
            row = int(np.flatnonzero(out)[0])
            raise DataError(f"rating {stored[row]:g} is outside the scale [{low}, {high}]", path=where,
                            line=row + 1, field="rating")
        _check_no_duplicate_pairs(user_idx, item_idx, len(items), users.index, items.index, where)
        if timestamp is None:
            values, missing = np.zeros(n, np.int64), np.ones(n, bool)
        else:
            values = np.asarray(timestamp, dtype=np.int64)
            missing = np.zeros(n, bool) if timestamp_missing is None else np.asarray(timestamp_missing, dtype=bool)
        frame = pd.DataFrame({
            "user_id": pd.Categorical.from_codes(user_idx, dtype=pd.CategoricalDtype(users.index)),
            "item_id": pd.Categorical.from_codes(item_idx, dtype=pd.CategoricalDtype(items.index)),
            "rating": stored,
            "timestamp": pd.arrays.IntegerArray(values, missing),
            "user_idx": user_idx,
            "item_idx": item_idx,
        }, copy=False)
        return cls(
            name=name, ratings=frame, users=users, items=items, user_schema=infer_schema(users, user_schema),
            item_schema=infer_schema(items, item_schema), rating_scale=(float(low), float(high)), meta=dict(meta or {}),
        )

    # ------------------------------------------------------------------ views
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_ratings(self) -> int:
        return len(self.ratings)

    def describe(self) -> dict:
        """Summary statistics: sizes, density, rating histogram, attribute columns, timestamp coverage."""
        r = self.ratings
        counts = r["rating"].value_counts().sort_index()
        per_user = r.groupby("user_idx").size()
        per_item = r.groupby("item_idx").size()
        return {
            "name": self.name,
            "users": int(r["user_id"].nunique()),
            "items": int(r["item_id"].nunique()),
            "ratings": int(len(r)),
            "catalogue_items": self.n_items,
            "density": float(len(r) / max(1, self.n_users * self.n_items)),
            "rating_scale": list(self.rating_scale),
            "rating_mean": float(r["rating"].mean()) if len(r) else float("nan"),
            "rating_histogram": {_fmt_rating(k): int(v) for k, v in counts.items()},
            "ratings_with_timestamp": int(r["timestamp"].notna().sum()),
            "ratings_per_user": _quantiles(per_user),
            "ratings_per_item": _quantiles(per_item),
            "user_attributes": {k: v.kind for k, v in self.user_schema.items()},
            "item_attributes": {k: v.kind for k, v in self.item_schema.items()},
        }

    def item_release_year(self) -> np.ndarray | None:
        """Release year per item index (float, NaN unknown), when the items table has a ``year`` column."""
        if "year" not in self.items.columns:
            return None
        return pd.to_numeric(self.items["year"], errors="coerce").to_numpy(dtype=np.float64)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write Parquet tables plus ``dataset.json``; the folder appears whole or not at all."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.ratings[["user_id", "item_id", "rating", "timestamp"]].to_parquet(tmp / "ratings.parquet", index=False)
            _lists_to_python(self.users).to_parquet(tmp / "users.parquet", index=True)
            _lists_to_python(self.items).to_parquet(tmp / "items.parquet", index=True)
            write_json(
                tmp / "dataset.json",
                {
                    "format_version": FORMAT_VERSION,
                    "name": self.name,
                    "rating_scale": list(self.rating_scale),
                    "user_schema": {k: v.to_json() for k, v in self.user_schema.items()},
                    "item_schema": {k: v.to_json() for k, v in self.item_schema.items()},
                    "meta": dict(self.meta),
                },
            )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "RatingDataset":
        directory = recover_dir(directory)
        spec, users, items, uschema, ischema = read_saved_tables(directory)
        ratings = pd.read_parquet(directory / "ratings.parquet")
        return cls.from_frames(
            spec["name"], ratings, users, items, user_schema=uschema, item_schema=ischema,
            rating_scale=tuple(spec["rating_scale"]), duplicates="error", source=directory, meta=spec.get("meta", {}),
        )


def read_saved_tables(directory: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame,
                                                 dict[str, AttributeSpec], dict[str, AttributeSpec]]:
    """``dataset.json``, the users and items tables and their schemas of a saved folder (multi-valued
    columns as tuples): what :meth:`RatingDataset.load` and the chunked reader share."""
    spec_path = directory / "dataset.json"
    if not spec_path.exists():
        raise DataError("not a saved metarec dataset (dataset.json is missing)", path=directory)
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    users = pd.read_parquet(directory / "users.parquet")
    items = pd.read_parquet(directory / "items.parquet")
    uschema = {k: AttributeSpec.from_json(v) for k, v in spec["user_schema"].items()}
    ischema = {k: AttributeSpec.from_json(v) for k, v in spec["item_schema"].items()}
    for frame, schema in ((users, uschema), (items, ischema)):
        for column, attr in schema.items():
            if attr.kind == "multi":
                frame[column] = frame[column].map(lambda v: None if v is None else tuple(v))
    return spec, users, items, uschema, ischema


def _resolve_duplicates(frame: pd.DataFrame, policy: DuplicatePolicy, where: str) -> pd.DataFrame:
    dup = frame.duplicated(["user_id", "item_id"], keep=False)
    if not dup.any():
        return frame
    n_extra = int(frame.duplicated(["user_id", "item_id"]).sum())
    if policy == "error":
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(
            f"duplicate (user_id, item_id) pair ({frame['user_id'].iloc[row]}, {frame['item_id'].iloc[row]})",
            path=where, line=row + 1,
        )
    if policy == "mean":
        agg = frame.groupby(["user_id", "item_id"], sort=False, as_index=False).agg(
            rating=("rating", "mean"), timestamp=("timestamp", "max")
        )
        log.warning("%s: %d duplicate (user, item) ratings averaged", where, n_extra)
        return agg
    if policy == "last":
        order = frame.assign(_row=np.arange(len(frame)))
        order = order.sort_values(["timestamp", "_row"], na_position="first", kind="stable")
        kept = order.drop_duplicates(["user_id", "item_id"], keep="last").sort_values("_row")
        log.warning("%s: %d duplicate (user, item) ratings dropped, latest kept", where, n_extra)
        return kept.drop(columns="_row")
    raise DataError(f"unknown duplicate policy {policy!r}; use last, mean or error")


def _check_no_duplicate_pairs(user_idx: np.ndarray, item_idx: np.ndarray, n_items: int, user_ids: pd.Index,
                              item_ids: pd.Index, where: str) -> None:
    """Raise on the first row whose (user, item) pair occurs twice; one sort of an int64 key, no strings."""
    key = user_idx * max(n_items, 1) + item_idx
    ordered = np.sort(key)
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return
    row = int(np.flatnonzero(np.isin(key, ordered[1:][same]))[0])
    raise DataError(f"duplicate (user_id, item_id) pair ({user_ids[user_idx[row]]}, {item_ids[item_idx[row]]})",
                    path=where, line=row + 1)


def indexed_by_id(table: pd.DataFrame, id_column: str, where: str | None = None) -> pd.DataFrame:
    """A copy of an attribute table indexed by string id (``id_column``: a column or the index already);
    :class:`DataError` naming the id when one appears twice."""
    table = table.copy()
    if id_column in table.columns:
        table = table.set_index(id_column)
    table.index = table.index.astype(str)
    table.index.name = id_column
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()][0]
        raise DataError(f"{id_column} {dup!r} appears twice in the attribute table", path=where, field=id_column)
    return table


def _attribute_table(table: pd.DataFrame | None, id_column: str, seen: pd.Series, where: str) -> pd.DataFrame:
    """Index by string id, one row per id (rated ones included), attribute columns only."""
    table = pd.DataFrame(index=pd.Index([], name=id_column)) if table is None else indexed_by_id(table, id_column, where)
    missing = pd.Index(pd.unique(seen)).difference(table.index)
    if len(missing):
        table = pd.concat([table, pd.DataFrame(index=pd.Index(missing, name=id_column))])
    return table


def _lists_to_python(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object and out[column].map(lambda v: isinstance(v, tuple)).any():
            out[column] = out[column].map(lambda v: list(v) if isinstance(v, tuple) else v)
    return out


def _quantiles(counts: pd.Series) -> dict:
    if not len(counts):
        return {}
    q = counts.quantile([0.0, 0.5, 1.0])
    return {"min": int(q.iloc[0]), "median": float(q.iloc[1]), "max": int(q.iloc[2]), "mean": float(counts.mean())}


def _fmt_rating(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
