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
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, header=0 if header else None, names=list(names), dtype=str,
            keep_default_na=False, na_values=[], quoting=3, engine="c", skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        raise DataError(f"malformed line: {exc}", path=path) from None
    offset = 2 if header else 1
    # Lines with fewer fields than names leave NaN in the missing columns.
    min_fields = len(names) - optional_trailing
    present = frame.notna().to_numpy()
    short = present[:, :min_fields].sum(axis=1) < min_fields
    if short.any():
        row = int(np.flatnonzero(short)[0])
        missing = names[int(np.argmin(present[row, :min_fields]))]
        raise DataError(
            f"expected at least {min_fields} fields, found {int(present[row].sum())}",
            path=path, line=row + offset, field=missing,
        )
    for column in required:
        empty = frame[column].isna() | (frame[column].str.strip() == "")
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataError("empty value", path=path, line=row + offset, field=column)
    frame.attrs["line_offset"] = offset
    return frame


def to_number(frame: pd.DataFrame, column: str, path: Path, *, integer: bool = False) -> pd.Series:
    """Parse a column as numbers; the first unparsable value raises with its line."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{frame[column].iloc[row]!r} is not a number", path=path,
            line=row + frame.attrs.get("line_offset", 1), field=column,
        )
    if integer:
        frac = values.notna() & (values != values.round())
        if frac.any():
            row = int(np.flatnonzero(frac.to_numpy())[0])
            raise DataError(
                f"{frame[column].iloc[row]!r} is not an integer", path=path,
                line=row + frame.attrs.get("line_offset", 1), field=column,
            )
    return values


def check_ratings(ratings: pd.Series, frame: pd.DataFrame, path: Path, scale: tuple[float, float]) -> None:
    """Reject NaN and out-of-scale ratings with the offending line."""
    low, high = scale
    bad = ~np.isfinite(ratings.to_numpy(dtype=np.float64)) | (ratings < low) | (ratings > high)
    if bad.any():
        row = int(np.flatnonzero(np.asarray(bad))[0])
        raise DataError(
            f"rating {frame['rating'].iloc[row]!r} is not in [{low:g}, {high:g}]", path=path,
            line=row + frame.attrs.get("line_offset", 1), field="rating",
        )
