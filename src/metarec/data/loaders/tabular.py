"""Any ratings table (CSV, TSV, Parquet or a DataFrame) through a column mapping.

This is the way in for data metarec does not know by name. Errors name the file, the 1-based
line (the header counts as line 1 in files) and the column, so a bad row can be found at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from metarec.data.dataset import DuplicatePolicy, RatingDataset
from metarec.data.loaders._text import read_text
from metarec.errors import DataError

Source = str | Path | pd.DataFrame
_DEFAULT_TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of the interactions table hold what.

    ``timestamp`` may be ``None`` (no timestamps); the default ``"timestamp"`` is used when such a
    column exists and silently skipped when it does not, whereas any other name must exist.
    ``user_attributes`` / ``item_attributes`` name columns of the interactions table that describe
    the user / item (when attributes are stored inline); per id the last row's value is kept.
    """

    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    timestamp: str | None = _DEFAULT_TIMESTAMP
    user_attributes: Sequence[str] = field(default=())
    item_attributes: Sequence[str] = field(default=())

    def __post_init__(self) -> None:
        # tuples keep the mapping hashable and immune to later mutation of a caller's list
        object.__setattr__(self, "user_attributes", tuple(self.user_attributes))
        object.__setattr__(self, "item_attributes", tuple(self.item_attributes))


@dataclass(frozen=True)
class _Table:
    frame: pd.DataFrame
    where: str  # file path, or "<DataFrame>"
    line_offset: int  # added to a 0-based row to get the reported line


def read_table(source: Source, *, sep: str | None = None, string_columns: Sequence[str] = ()) -> _Table:
    """Read a CSV/TSV/Parquet file (or wrap a DataFrame); ``string_columns`` stay text (ids keep "007")."""
    if isinstance(source, pd.DataFrame):
        return _Table(source.reset_index(drop=True), "<DataFrame>", 1)
    path = Path(source)
    if not path.exists():
        raise DataError("file not found", path=path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DataError(f"cannot read Parquet: {exc}", path=path) from None
        return _Table(frame.reset_index(drop=True), str(path), 1)
    if sep is None:
        sep = "\t" if any(s in (".tsv", ".tab") for s in suffixes) else ("," if ".csv" in suffixes else _sniff(path))
    try:
        head = pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8")
        dtypes = {c: str for c in string_columns if c in head.columns}
        frame = pd.read_csv(path, sep=sep, dtype=dtypes, encoding="utf-8", skip_blank_lines=False)
    except UnicodeDecodeError as exc:
        read_text(path, "utf-8")  # raises the same problem with its line number
        raise DataError(f"cannot decode as utf-8: {exc.reason}", path=path) from None
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty (not even a header line)", path=path) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"malformed table: {exc}", path=path) from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the surplus first field(s) as an index
        raise DataError(f"more fields than the header's {len(head.columns)} ({', '.join(map(str, head.columns))}): "
                        "every column would shift", path=path, line=2)
    return _Table(frame, str(path), 2)


def _sniff(path: Path) -> str:
    """The most frequent of tab, comma, semicolon and pipe in the header line (comma on a tie of zero)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    counts = {sep: first.count(sep) for sep in ("\t", ",", ";", "|")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _where_line(table: _Table, row: int) -> tuple[str, int, str]:
    """The message suffix that says how lines are counted."""
    if table.where == "<DataFrame>":
        return table.where, row + 1, "(1-based row of the DataFrame)"
    if table.line_offset == 2:
        return table.where, row + 2, "(line 1 is the header)"
    return table.where, row + 1, "(1-based row)"


def _require(table: _Table, column: str | None, role: str) -> None:
    if column is not None and column not in table.frame.columns:
        raise DataError(f"{role} column not found (columns: {', '.join(map(str, table.frame.columns))})",
                        path=table.where, field=column)


def _refuse_objects(table: _Table, raw: pd.Series, what: str, column: str) -> None:
    """A Parquet / DataFrame column of numbers may hold text that reads as a number, not bytes, lists or
    true / false (pandas would read b'5.0' as 5)."""
    if raw.dtype != object:
        return
    odd = raw.map(lambda v: isinstance(v, (bytes, bytearray, list, tuple, dict, set, np.ndarray, bool, np.bool_)))
    if odd.any():
        row = int(np.flatnonzero(odd.to_numpy())[0])
        where, line, note = _where_line(table, row)
        raise DataError(f"{what} {raw.iloc[row]!r} is a {type(raw.iloc[row]).__name__}, not a number {note}",
                        path=where, line=line, field=column)


def _ids(table: _Table, column: str, role: str) -> pd.Series:
    """A column of ids as text: strings and integers (a Parquet float column of whole numbers too, 7.0 ->
    "7"); true / false, fractions, bytes, lists and other objects are refused with their row rather
    than turned into the text of their repr."""
    raw = table.frame[column]
    if pd.api.types.is_bool_dtype(raw):
        raise DataError(f"{role}s are true / false values, not ids", path=table.where, field=column)
    if pd.api.types.is_float_dtype(raw):
        values = raw.to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(values) & (values == np.round(values)) & (np.abs(values) <= 2.0 ** 53))
        if bad.any():
            where, line, note = _where_line(table, int(np.flatnonzero(bad)[0]))
            raise DataError(f"{role} {values[bad][0]:g} is not an id {note}", path=where, line=line, field=column)
        return pd.Series(values.astype(np.int64), index=raw.index).astype(str)
    if raw.dtype == object:
        kinds = raw.map(type)
        odd = ~kinds.isin([str, int, np.int64, np.int32])
        if odd.any():
            row = int(np.flatnonzero(odd.to_numpy())[0])
            where, line, note = _where_line(table, row)
            raise DataError(f"{role} {raw.iloc[row]!r} is a {type(raw.iloc[row]).__name__}, not text or an integer {note}",
                            path=where, line=line, field=column)
    return raw.astype(str).str.strip()


def _numbers(table: _Table, column: str, what: str) -> pd.Series:
    """Parse a column as finite numbers; the first bad or missing value raises with its line."""
    raw = table.frame[column]
    if pd.api.types.is_bool_dtype(raw):
        raise DataError(f"{what}s are true / false values, not numbers", path=table.where, field=column)
    _refuse_objects(table, raw, what, column)
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        where, line, note = _where_line(table, row)
        shown = raw.iloc[row]
        if pd.isna(shown) or str(shown).strip().lower() == "nan":
            message = f"{what} is missing (NaN) {note}"
        else:
            message = f"{what} {shown!r} is not a finite number {note}"
        raise DataError(message, path=where, line=line, field=column)
    return values


def _refuse_outliers(table: _Table, rating: pd.Series, column: str) -> None:
    """With no ``rating_scale`` given the scale is the observed range, so a typo (50 among 1-5, 1e300)
    would become the model's scale: a value more than 10 interquartile ranges (at least 1) from the
    median is refused, naming its line, unless the caller sets the scale."""
    values = rating.to_numpy(dtype=np.float64)
    low, median, high = np.quantile(values, [0.25, 0.5, 0.75])
    far = np.abs(values - median) > 10 * max(high - low, 1.0)
    if far.any():
        row = int(np.flatnonzero(far)[0])
        where, line, note = _where_line(table, row)
        raise DataError(f"rating {values[row]:g} is far outside the others (median {median:g}, middle half "
                        f"{low:g}-{high:g}) {note}: fix the row, or set rating_scale", path=where, line=line, field=column)


def _timestamps(table: _Table, column: str) -> pd.Series:
    """Unix seconds from numbers, ISO datetimes (naive = UTC) or datetime columns; empty stays missing."""
    raw = table.frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw if getattr(raw.dt, "tz", None) is not None else raw.dt.tz_localize("UTC")
        return _to_unix(parsed)
    _refuse_objects(table, raw, "timestamp", column)
    text = raw.astype("string").str.strip()
    present = raw.notna() & (text != "")
    numeric = pd.to_numeric(raw.where(present), errors="coerce")
    if not (numeric.isna() & present).any():
        values = numeric.astype("float64")
        huge = present & ~(values.abs() <= 2.0 ** 53)  # inf, 1e30: no instant in any time unit
        if huge.any():
            row = int(np.flatnonzero(huge.to_numpy())[0])
            where, line, note = _where_line(table, row)
            raise DataError(f"timestamp {values.iloc[row]:g} is not a time (unix seconds or an ISO datetime) {note}",
                            path=where, line=line, field=column)
        return values
    parsed = pd.to_datetime(text.where(present), errors="coerce", utc=True, format="ISO8601")
    bad = parsed.isna() & present
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        where, line, note = _where_line(table, row)
        raise DataError(f"timestamp {raw.iloc[row]!r} is neither a number nor an ISO datetime {note}",
                        path=where, line=line, field=column)
    return _to_unix(parsed)


def _to_unix(parsed: pd.Series) -> pd.Series:
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.astype("float64")


def _attribute_table(source: Source | None, id_column: str, mapping_id: str) -> pd.DataFrame | None:
    """A separate users/items table: indexed by id, found as ``user_id``/``item_id`` or the mapped name."""
    if source is None:
        return None
    if isinstance(source, pd.DataFrame) and source.index.name in (id_column, mapping_id):
        source = source.reset_index()  # ids in the index, as RatingDataset.users / .items hold them
    table = read_table(source, string_columns=(id_column, mapping_id))
    frame = table.frame
    for candidate in (id_column, mapping_id):
        if candidate in frame.columns:
            return frame.rename(columns={candidate: id_column})
    raise DataError(f"id column not found (columns: {', '.join(map(str, frame.columns))})",
                    path=table.where, field=mapping_id)


def _inline(frame: pd.DataFrame, id_column: str, columns: tuple[str, ...]) -> pd.DataFrame | None:
    if not columns:
        return None
    return frame[[id_column, *columns]].drop_duplicates(id_column, keep="last").reset_index(drop=True)


def load_table(
    source: Source,
    mapping: ColumnMapping | None = None,
    *,
    users: Source | None = None,
    items: Source | None = None,
    name: str | None = None,
    duplicates: DuplicatePolicy = "last",
    rating_scale: tuple[float, float] | None = None,
    sep: str | None = None,
    attribute_kinds: Mapping[str, str] | None = None,
    list_separator: str = "|",
) -> RatingDataset:
    """Build a dataset from an interactions table plus optional users / items tables.

    ``source`` is a CSV/TSV (separator ``sep``, else from the suffix, else sniffed), a Parquet file,
    or a DataFrame. ``mapping`` says which columns are user, item, rating, timestamp and inline
    attributes. Ratings must be finite numbers (``rating_scale`` defaults to the observed range);
    timestamps may be unix seconds or ISO datetimes. ``users`` / ``items`` tables are keyed by
    ``user_id`` / ``item_id`` or by the mapped id column name. Duplicate (user, item) pairs follow
    ``duplicates`` (``last``, ``mean`` or ``error``). ``attribute_kinds`` sets a column's kind
    (``categorical``, ``multi``, ``numeric``, ``text``) instead of the guess from its type; ``users.x`` /
    ``items.x`` name one table's column, a bare ``x`` every table that has it. A ``multi`` column given
    as text is split on ``list_separator``.
    """
    mapping = mapping or ColumnMapping()
    table = read_table(source, sep=sep, string_columns=(mapping.user, mapping.item))
    _require(table, mapping.user, "user")
    _require(table, mapping.item, "item")
    _require(table, mapping.rating, "rating")
    timestamp = mapping.timestamp
    if timestamp == _DEFAULT_TIMESTAMP and timestamp not in table.frame.columns:
        timestamp = None
    _require(table, timestamp, "timestamp")
    for column in (*mapping.user_attributes, *mapping.item_attributes):
        _require(table, column, "attribute")

    frame = table.frame
    for column, role in ((mapping.user, "user id"), (mapping.item, "item id")):
        missing = frame[column].isna() | (frame[column].astype("string").str.strip() == "")
        if missing.any():
            where, line, note = _where_line(table, int(np.flatnonzero(missing.to_numpy())[0]))
            raise DataError(f"{role} is missing {note}", path=where, line=line, field=column)
    ratings = pd.DataFrame({
        "user_id": _ids(table, mapping.user, "user id"),
        "item_id": _ids(table, mapping.item, "item id"),
        "rating": _numbers(table, mapping.rating, "rating"),
    })
    if not len(ratings):
        raise DataError("no ratings: the table has a header and no rows", path=table.where)
    if rating_scale is None:
        _refuse_outliers(table, ratings["rating"], mapping.rating)
    else:
        low, high = rating_scale
        out = ((ratings["rating"] < low) | (ratings["rating"] > high)).to_numpy()
        if out.any():
            where, line, note = _where_line(table, int(np.flatnonzero(out)[0]))
            raise DataError(f"rating {ratings['rating'].iloc[int(np.flatnonzero(out)[0])]:g} is outside the scale "
                            f"[{low:g}, {high:g}] {note}", path=where, line=line, field=mapping.rating)
    # an explicit all-missing column when there are none: same dtype as after a save/load round trip
    ratings["timestamp"] = _timestamps(table, timestamp) if timestamp is not None else np.nan

    inline = frame.assign(user_id=ratings["user_id"], item_id=ratings["item_id"])
    # ``sep`` is for the interactions file; attribute files get their own (suffix, else sniffed)
    user_table = _merge(_attribute_table(users, "user_id", mapping.user),
                        _inline(inline, "user_id", mapping.user_attributes), "user_id")
    item_table = _merge(_attribute_table(items, "item_id", mapping.item),
                        _inline(inline, "item_id", mapping.item_attributes), "item_id")
    if name is None:
        name = "table" if isinstance(source, pd.DataFrame) else Path(source).name.split(".")[0]
    user_schema, item_schema = _kinds_by_table(attribute_kinds or {}, user_table, item_table)
    user_table = _split_lists(user_table, user_schema, list_separator)
    item_table = _split_lists(item_table, item_schema, list_separator)
    return RatingDataset.from_frames(
        name, ratings, user_table, item_table, rating_scale=rating_scale, duplicates=duplicates,
        source=table.where, meta={"source": table.where, "format": "table"},
        user_schema=user_schema, item_schema=item_schema,
    )


def _kinds_by_table(kinds: Mapping[str, str], users: pd.DataFrame | None,
                    items: pd.DataFrame | None) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``{column or users.column / items.column: kind}`` into the users' and the items' overrides;
    a name no table has is an error that names it."""
    from metarec.errors import ConfigError

    tables = {"users": users, "items": items}
    out: dict[str, dict[str, str]] = {"users": {}, "items": {}}
    for name, kind in kinds.items():
        prefix, dot, column = name.partition(".")
        targets = [prefix] if dot and prefix in tables else ["users", "items"]
        column = column if dot and prefix in tables else name
        found = [t for t in targets if tables[t] is not None and column in tables[t].columns and column not in
                 ("user_id", "item_id")]
        if not found:
            raise ConfigError(f"attribute {name!r}: no such column in the "
                              f"{' or '.join(t for t in targets)} table(s)")
        for t in found:
            out[t][column] = kind
    return out["users"], out["items"]


def _split_lists(frame: pd.DataFrame | None, schema: Mapping[str, str], separator: str) -> pd.DataFrame | None:
    """Text values of ``multi`` columns split on ``separator`` into tuples (empty text: missing)."""
    if frame is None:
        return None
    multi = [c for c, kind in schema.items() if kind == "multi"]
    if not multi:
        return frame
    frame = frame.copy()
    for column in multi:
        frame[column] = frame[column].map(
            lambda v: tuple(x.strip() for x in v.split(separator) if x.strip()) or None if isinstance(v, str) else v)
    return frame


def _merge(table: pd.DataFrame | None, inline: pd.DataFrame | None, id_column: str) -> pd.DataFrame | None:
    """A separate table and inline attributes together; the separate table wins on shared columns."""
    if table is None or inline is None:
        return table if inline is None else inline
    if id_column not in table.columns:
        table = table.reset_index()
    table = table.assign(**{id_column: table[id_column].astype(str)})
    extra = [c for c in inline.columns if c not in table.columns or c == id_column]
    return table.merge(inline[extra], on=id_column, how="outer")
