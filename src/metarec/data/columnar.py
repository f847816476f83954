"""A saved dataset read chunk by chunk into compact columns: for ratings tables of tens of millions of rows.

Why: :meth:`RatingDataset.load` reads ``ratings.parquet`` whole into pandas and keeps a Python string
per id per rating. :func:`load_columnar` reads it a batch of rows at a time with pyarrow and maps the
ids to vocabulary indices in Arrow dictionaries (each distinct id of a batch is looked up once), into
preallocated int64 / float32 columns; :meth:`RatingDataset.from_columns` then checks them vectorised.
The result has the same vocabularies, rows (in file order), ratings and timestamps as ``load``; the id
columns are Categoricals over the vocabularies instead of strings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metarec._io import recover_dir
from metarec.data.dataset import RatingDataset, indexed_by_id, read_saved_tables
from metarec.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 1 << 20


def load_columnar(directory: str | Path, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> RatingDataset:
    """The saved dataset in ``directory`` (:meth:`RatingDataset.save`'s layout), its ratings read
    ``batch_rows`` rows at a time. Ids of rated users or items missing from the attribute tables are
    appended to them in sorted order, as :meth:`RatingDataset.from_frames` does."""
    if batch_rows < 1:
        raise DataError(f"batch_rows must be >= 1, got {batch_rows}")
    directory = recover_dir(directory)
    spec, users, items, user_schema, item_schema = read_saved_tables(directory)
    users = indexed_by_id(users, "user_id")
    items = indexed_by_id(items, "item_id")
    path = directory / "ratings.parquet"
    parquet = pq.ParquetFile(path)
    names = set(parquet.schema_arrow.names)
    for column in ("user_id", "item_id", "rating"):
        if column not in names:
            raise DataError(f"missing required column '{column}'", path=path, field=column)
    n = parquet.metadata.num_rows
    user_idx, item_idx = np.empty(n, np.int64), np.empty(n, np.int64)
    rating, timestamp = np.empty(n, np.float64), np.zeros(n, np.int64)
    missing = np.ones(n, bool)
    user_ids, item_ids = _IdCodes(users.index, "user_id"), _IdCodes(items.index, "item_id")
    columns = ["user_id", "item_id", "rating"] + (["timestamp"] if "timestamp" in names else [])
    start = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        end = start + batch.num_rows
        where = f"{path} rows {start + 1}-{end}"
        user_idx[start:end] = user_ids.codes(batch.column("user_id"), where)
        item_idx[start:end] = item_ids.codes(batch.column("item_id"), where)
        rating[start:end] = _numbers(batch.column("rating"), "rating", where)
        if "timestamp" in names:
            timestamp[start:end], missing[start:end] = _timestamps(batch.column("timestamp"), where)
        start = end
    users = user_ids.append_unseen(users, user_idx)
    items = item_ids.append_unseen(items, item_idx)
    log.info("%s: %d ratings read in batches of %d rows", directory, n, batch_rows)
    return RatingDataset.from_columns(
        spec["name"], user_idx, item_idx, rating, users, items, timestamp=timestamp, timestamp_missing=missing,
        user_schema=user_schema, item_schema=item_schema, rating_scale=tuple(spec["rating_scale"]),
        source=directory, meta=spec.get("meta", {}),
    )


class _IdCodes:
    """Ids -> vocabulary positions; an id not in the vocabulary gets a provisional code past its end."""

    def __init__(self, known: pd.Index, field: str) -> None:
        self.known = known
        self.field = field
        self.unseen: dict[str, int] = {}  # first-seen order
        self._last: tuple[pa.Array, np.ndarray] | None = None  # the previous batch's dictionary and its codes

    def codes(self, column: pa.Array, where: str) -> np.ndarray:
        if column.null_count:
            raise DataError(f"{column.null_count} ratings have no {self.field}", path=where, field=self.field)
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        dictionary = column.dictionary
        if self._last is not None and self._last[0].equals(dictionary):
            positions = self._last[1]  # row groups written with one dictionary (the item ids): looked up once
        else:
            text = dictionary if pa.types.is_string(dictionary.type) else pc.cast(dictionary, pa.string())
            values = text.to_numpy(zero_copy_only=False)
            positions = self.known.get_indexer(values).astype(np.int64)
            for k in np.flatnonzero(positions < 0).tolist():
                positions[k] = self.unseen.setdefault(str(values[k]), len(self.known) + len(self.unseen))
            self._last = (dictionary, positions)
        return positions[column.indices.to_numpy(zero_copy_only=False)]

    def append_unseen(self, table: pd.DataFrame, codes: np.ndarray) -> pd.DataFrame:
        """``table`` with the unseen ids appended (sorted, attributes missing); ``codes`` remapped in place."""
        if not self.unseen:
            return table
        new = pd.Index(sorted(self.unseen), name=table.index.name)
        table = pd.concat([table, pd.DataFrame(index=new)])
        final = table.index.get_indexer(list(self.unseen))  # provisional code order = first-seen order
        late = codes >= len(self.known)
        codes[late] = final[codes[late] - len(self.known)]
        log.info("%d %s values rated but missing from the attribute table: appended", len(new), self.field)
        return table


def _numbers(column: pa.Array, field: str, where: str) -> np.ndarray:
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise DataError(f"{field} must be numeric, not {column.type}", path=where, field=field)
    return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # nulls -> NaN, rejected later


def _timestamps(column: pa.Array, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer unix seconds (floats rounded half to even, as ``from_frames``) and a missing flag per row."""
    missing = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(column.type):
        values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    else:
        seconds = _numbers(column, "timestamp", where)
        missing = missing | ~np.isfinite(seconds)
        values = np.rint(np.where(missing, 0.0, seconds)).astype(np.int64)
    return values, missing
