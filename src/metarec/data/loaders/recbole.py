"""RecBole atomic files (``.inter`` + optional ``.user`` / ``.item``), the format many benchmarks ship in.

Each file is tab-separated, UTF-8, with a header of ``name:type`` fields. Types map to attribute
kinds: ``token`` -> categorical, ``token_seq`` -> multi (space-separated), ``float`` -> numeric;
``float_seq`` (dense vectors) has no attribute kind here and is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metarec.data.dataset import DuplicatePolicy, RatingDataset
from metarec.data.loaders._text import check_ratings, read_delimited, read_text, to_number
from metarec.errors import DataError

FIELD_TYPES: dict[str, str | None] = {"token": "categorical", "token_seq": "multi", "float": "numeric",
                                      "float_seq": None}


def resolve_prefix(folder_or_prefix: str | Path) -> Path:
    """``data/ml-100k`` (folder), ``data/ml-100k/ml-100k`` (prefix) or ``.../ml-100k.inter`` -> the prefix."""
    path = Path(folder_or_prefix)
    if path.is_dir():
        own = path / f"{path.name}.inter"
        if own.exists():
            return own.with_suffix("")
        found = sorted(path.glob("*.inter"))
        if len(found) == 1:
            return found[0].with_suffix("")
        if not found:
            raise DataError("no .inter file in this folder", path=path)
        raise DataError(f"several .inter files ({', '.join(p.name for p in found)}); pass the one to use",
                        path=path)
    if path.suffix in (".inter", ".user", ".item"):
        path = path.with_suffix("")
    inter = path.parent / f"{path.name}.inter"
    if not inter.exists():
        raise DataError("file not found", path=inter)
    return path


def read_atomic(path: Path, required: tuple[str, ...] = ()) -> tuple[pd.DataFrame, dict[str, str]]:
    """One atomic file as strings plus its ``name -> type`` header; bad headers name line 1."""
    text = read_text(path, "utf-8")
    header_line = text.split("\n", 1)[0].rstrip("\r")
    types: dict[str, str] = {}
    for token in header_line.split("\t"):
        name, colon, kind = token.strip().rpartition(":")
        if not colon or not name:
            raise DataError(f"header field {token!r} is not 'name:type'", path=path, line=1)
        if kind not in FIELD_TYPES:
            raise DataError(f"unknown field type {kind!r}; expected one of {', '.join(FIELD_TYPES)}",
                            path=path, line=1, field=name)
        if name in types:
            raise DataError("field appears twice in the header", path=path, line=1, field=name)
        types[name] = kind
    for name in required:
        if name not in types:
            raise DataError(f"required field missing from the header (has: {', '.join(types)})",
                            path=path, line=1, field=name)
    frame = read_delimited(path, "\t", list(types), required=list(required), header=True)
    return frame, types


def _attributes(frame: pd.DataFrame, types: dict[str, str], key: str, path: Path) -> tuple[pd.DataFrame, dict]:
    """The key column plus one converted column per attribute field, and their kinds."""
    out = pd.DataFrame({key: frame[key].str.strip()})
    schema: dict[str, str] = {}
    for name, kind in types.items():
        if name == key or FIELD_TYPES[kind] is None:
            continue
        column = frame[name].where(frame[name].str.strip() != "", None)
        if kind == "token":
            out[name] = column.str.strip()
        elif kind == "token_seq":
            out[name] = [tuple(v.split()) or None if isinstance(v, str) else None for v in column]
        else:
            out[name] = to_number(frame.assign(**{name: column}), name, path)
        schema[name] = FIELD_TYPES[kind]  # type: ignore[assignment]
    return out, schema


def load_recbole(
    folder_or_prefix: str | Path,
    *,
    name: str | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str = "rating",
    time_field: str = "timestamp",
    duplicates: DuplicatePolicy = "last",
    rating_scale: tuple[float, float] | None = None,
) -> RatingDataset:
    """Load ``<prefix>.inter`` (required; needs user, item and rating fields) with ``.user`` / ``.item``.

    Field names default to RecBole's own defaults (``user_id``, ``item_id``, ``rating``,
    ``timestamp``). Extra ``.inter`` fields are ignored. ``rating_scale`` defaults to the observed
    min/max. The dataset is named after the prefix unless ``name`` is given.
    """
    prefix = resolve_prefix(folder_or_prefix)
    path = prefix.parent / f"{prefix.name}.inter"
    raw, types = read_atomic(path, (user_field, item_field, rating_field))
    rating = to_number(raw, rating_field, path)
    if rating_scale is not None:
        check_ratings(rating, raw, path, rating_scale, field=rating_field)
    ratings = pd.DataFrame({"user_id": raw[user_field].str.strip(), "item_id": raw[item_field].str.strip(),
                            "rating": rating})
    if time_field in types:
        stamps = raw[time_field].where(raw[time_field].str.strip() != "", None)
        ratings["timestamp"] = to_number(raw.assign(**{time_field: stamps}), time_field, path)
    else:  # explicit all-missing column: same dtype as after a save/load round trip
        ratings["timestamp"] = float("nan")

    tables: dict[str, tuple[pd.DataFrame | None, dict]] = {}
    for suffix, key in (("user", user_field), ("item", item_field)):
        side = prefix.parent / f"{prefix.name}.{suffix}"
        if side.exists():
            frame, side_types = read_atomic(side, (key,))
            table, schema = _attributes(frame, side_types, key, side)
            tables[suffix] = (table.rename(columns={key: f"{suffix}_id"}), schema)
        else:
            tables[suffix] = (None, {})
    return RatingDataset.from_frames(
        name or prefix.name, ratings, tables["user"][0], tables["item"][0],
        user_schema=tables["user"][1], item_schema=tables["item"][1],
        rating_scale=rating_scale, duplicates=duplicates, source=path,
        meta={"source": str(path), "format": "recbole"},
    )
