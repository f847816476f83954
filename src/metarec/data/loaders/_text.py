"""Strict reading of delimited text files: every problem names the file, line and field."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from metarec.errors import DataError


def read_text(path: Path, encoding: str) -> str:
    """The whole file as text (``.gz`` transparently); undecodable bytes raise with the line number."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"cannot decode byte {raw[exc.start]:#04x} as {encoding}", path=path, line=line) from None


def read_delimited(
    path: Path,
    sep: str,
    names: Sequence[str],
    *,
    required: Sequence[str],
    optional_trailing: int = 0,
    encoding: str = "utf-8",
    header: bool = False,
) -> pd.DataFrame:
    """Read a separated file as strings with ``names`` columns.

    A line with too many fields, or missing any of ``required`` (the last ``optional_trailing``
    columns may be absent, as ML-1M's timestamp-less lines are), raises :class:`DataError` naming the
    line. Multi-character separators are folded into a tab first so the fast C parser can be used.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path)
    text = read_text(path, encoding)
    if len(sep) > 1:
        if "\t" in text:
            raise DataError("unexpected tab character in a '%s'-separated file" % sep, path=path)
        text = text.replace(sep, "\t")
        sep = "\t"
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        line = text[: text.index("\r")].count("\n") + 1
        raise DataError("stray carriage return inside a line", path=path, line=line)
    text = text.rstrip("\n") + "\n" if text.strip("\n") else ""
    offset = 2 if header else 1
    counts, lengths = _fields_per_line(text, sep)
    if header:
        counts, lengths = counts[1:], lengths[1:]
    min_fields = len(names) - optional_trailing
    short = counts < min_fields
    if short.any():
        row = int(np.flatnonzero(short)[0])
        if lengths[row] == 0:
            raise DataError("empty line", path=path, line=row + offset)
        raise DataError(
            f"expected at least {min_fields} fields, found {int(counts[row])}",
            path=path, line=row + offset, field=names[int(counts[row])],
        )
    long = counts > len(names)
    if long.any():
        row = int(np.flatnonzero(long)[0])
        raise DataError(f"expected at most {len(names)} fields, found {int(counts[row])}", path=path,
                        line=row + offset)
    if not len(counts):
        frame = pd.DataFrame({name: pd.Series([], dtype=str) for name in names})
        frame.attrs["line_offset"] = offset
        return frame
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, header=0 if header else None, names=list(names), dtype=str,
            keep_default_na=False, na_values=[], quoting=3, engine="c", skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        raise DataError(f"malformed line: {exc}", path=path) from None
    if len(frame) != len(counts):
        raise DataError(f"parsed {len(frame)} rows from {len(counts)} lines", path=path)
    # The C parser fills absent trailing fields with ""; they are missing, not empty.
    for k in range(min_fields, len(names)):
        absent = counts <= k
        if absent.any():
            frame[names[k]] = frame[names[k]].where(~absent, None)
    for column in required:
        empty = frame[column].isna() | (frame[column].str.strip() == "")
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataError("empty value", path=path, line=row + offset, field=column)
    frame.attrs["line_offset"] = offset
    return frame


def _fields_per_line(text: str, sep: str) -> tuple[np.ndarray, np.ndarray]:
    """Fields and characters per line, vectorised: the C parser pads short lines silently, so count first."""
    if not text:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if ord(sep) >= 128:  # non-ASCII separator: count on the text itself (rare)
        lines = text[:-1].split("\n")
        return (np.array([line.count(sep) + 1 for line in lines], dtype=np.int64),
                np.array([len(line) for line in lines], dtype=np.int64))
    buf = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)  # text ends with "\n", so every line has an end
    starts = np.concatenate([[0], ends[:-1] + 1])
    seps = np.flatnonzero(buf == ord(sep))
    per_line = np.diff(np.concatenate([[0], np.searchsorted(seps, ends)]))
    return per_line + 1, ends - starts


def to_number(frame: pd.DataFrame, column: str, path: Path, *, integer: bool = False) -> pd.Series:
    """Parse a column as numbers; the first unparsable value raises with its line."""
    try:  # fast path (Arrow cast); it rejects anything odd, and then the slow path finds the culprit
        values = frame[column].astype("float64")
    except (ValueError, TypeError):
        values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{frame[column].iloc[row]!r} is not a number", path=path,
            line=row + frame.attrs.get("line_offset", 1), field=column,
        )
    if integer:
        frac = values.notna() & ((values != values.round()) | ~(values.abs() <= 2.0 ** 53))  # 1e30: no integer we keep
        if frac.any():
            row = int(np.flatnonzero(frac.to_numpy())[0])
            raise DataError(
                f"{frame[column].iloc[row]!r} is not an integer", path=path,
                line=row + frame.attrs.get("line_offset", 1), field=column,
            )
    return values


def plain_ids(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """A column of integer ids written plainly (``42``; not ``042``, ``+42`` or ``42.0``): the ids stay
    text, so another spelling of the same number would be another user or item. The first other one
    raises with its line."""
    ids = frame[column].astype("string").str.strip()
    bad = ~ids.str.fullmatch(r"0|[1-9][0-9]*").fillna(False).astype(bool)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{frame[column].iloc[row]!r} is not a plain integer id (digits, no sign, no leading zero)",
                        path=path, line=row + frame.attrs.get("line_offset", 1), field=column)
    return ids.astype(str)


def check_ratings(
    ratings: pd.Series, frame: pd.DataFrame, path: Path, scale: tuple[float, float], *, field: str = "rating"
) -> None:
    """Reject NaN and out-of-scale ratings with the offending line (``field`` names the raw column)."""
    low, high = scale
    bad = ~np.isfinite(ratings.to_numpy(dtype=np.float64)) | (ratings < low) | (ratings > high)
    if bad.any():
        row = int(np.flatnonzero(np.asarray(bad))[0])
        raise DataError(
            f"rating {frame[field].iloc[row]!r} is not in [{low:g}, {high:g}]", path=path,
            line=row + frame.attrs.get("line_offset", 1), field=field,
        )
