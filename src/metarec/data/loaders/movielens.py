"""MovieLens 100K and 1M, from GroupLens' own files (plus MeLU's IMDb item features for 1M).

Every parse problem raises :class:`~metarec.errors.DataError` naming the file, line and field; the
big ratings file goes through the C parser (``::`` folded to tabs) so ML-1M loads in about a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.data.loaders._text import check_ratings, plain_ids, read_delimited, to_number
from metarec.data.schema import AttributeSpec
from metarec.errors import DataError, DataNotFoundError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def load_ml100k(folder: str | Path) -> RatingDataset:
    """``u.data`` (tab: user, item, rating, unix time), ``u.user`` and ``u.item`` (``|``, latin-1)."""
    folder = Path(folder)
    path = folder / "u.data"
    raw = read_delimited(path, "\t", ["user_id", "item_id", "rating", "timestamp"],
                         required=["user_id", "item_id", "rating", "timestamp"])
    if raw.empty:
        raise DataError("no ratings in the file", path=path)
    rating = to_number(raw, "rating", path)
    check_ratings(rating, raw, path, (1, 5))
    timestamp = to_number(raw, "timestamp", path, integer=True)
    ratings = pd.DataFrame({"user_id": plain_ids(raw, "user_id", path), "item_id": plain_ids(raw, "item_id", path),
                            "rating": rating, "timestamp": timestamp})

    upath = folder / "u.user"
    users = read_delimited(upath, "|", ["user_id", "age", "gender", "occupation", "zip"],
                           required=["user_id", "age", "gender", "occupation"], encoding="latin-1")
    users["user_id"] = plain_ids(users, "user_id", upath)
    users["age"] = to_number(users, "age", upath, integer=True)
    users["zip_prefix"] = users.pop("zip").str.strip().str[:1].replace("", pd.NA)

    items = ml100k_items(folder)
    return RatingDataset.from_frames(
        "ml-100k", ratings, users, items,
        user_schema={"age": AttributeSpec("numeric", buckets=7), "gender": "categorical",
                     "occupation": "categorical", "zip_prefix": "categorical"},
        item_schema={"title": "text", "year": AttributeSpec("numeric", buckets=8), "genres": "multi"},
        rating_scale=(1.0, 5.0), duplicates="error", source=path,
        # Items released in 1997 or later are "new" (21% of the catalogue); MeLU's 1998 leaves ML-100K 65.
        meta={"source": str(folder), "new_item_rule": {"release_year_from": 1997}},
    )


def ml100k_items(folder: str | Path) -> pd.DataFrame:
    """``u.item`` alone (item_id, title, year, genres): what showing titles needs, without the ratings."""
    ipath = Path(folder) / "u.item"
    names = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
    items = read_delimited(ipath, "|", names, required=["item_id", "title"], encoding="latin-1")
    flags = items[list(ML100K_GENRES)].to_numpy() == "1"
    genres = [tuple(g for g, on in zip(ML100K_GENRES, row) if on) for row in flags]
    released = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce")
    return pd.DataFrame({
        "item_id": plain_ids(items, "item_id", ipath),
        "title": items["title"],
        "year": released.dt.year.astype("Float64"),
        "genres": genres,
    })


ML1M_NEW_ITEM_RULE = {"release_year_from": 1998}  # MeLU's protocol: films released 1998 or later are "new"
IMDB_FOLDER = "ml-1m-melu-extra"
IMDB_FILE = "movies_extrainfos.dat"
_IMDB_FIELDS = ["item_id", "title", "year", "rate", "released", "genre", "director", "writer", "actors", "plot",
                "poster"]


def load_ml1m(folder: str | Path, *, imdb_features: bool = False, imdb_folder: str | Path | None = None) -> RatingDataset:
    """MovieLens 1M: ``ratings.dat[.gz]``, ``users.dat``, ``movies.dat`` (all ``::``-separated, latin-1).

    A ratings line has 4 fields (``user::movie::rating::unix_ts``) or 3 (no timestamp); a missing
    timestamp stays missing, never invented, because the rebuilt public copy only has timestamps for
    users 1-2999. Users get ``gender``, ``age`` (the age-bucket code, categorical), ``occupation``
    (code, categorical) and ``zip_prefix`` (first digit). Items are the whole ``movies.dat``
    catalogue (3,883 films, 3,706 of them rated) with ``title``, ``year`` (from the title's "(1995)")
    and ``genres`` (multi).

    With ``imdb_features`` MeLU's ``movies_extrainfos.dat`` (UTF-8, CRLF) is joined by movie id and
    adds ``rate`` (MPAA rating, categorical), ``imdb_genres``, ``directors`` and ``actors`` (multi,
    split on ", "); films missing from it (MeLU dropped 860 and 1795) and "N/A" values stay missing.
    ``imdb_folder`` defaults to ``ml-1m-melu-extra`` next to ``folder`` (or inside it).
    """
    folder = Path(folder)
    extra_path = _imdb_file(folder, imdb_folder) if imdb_features else None  # fail before the slow part
    path = folder / "ratings.dat"
    if not path.exists() and (folder / "ratings.dat.gz").exists():
        path = folder / "ratings.dat.gz"
    raw = read_delimited(path, "::", ["user_id", "item_id", "rating", "timestamp"],
                         required=["user_id", "item_id", "rating"], optional_trailing=1, encoding="latin-1")
    if raw.empty:
        raise DataError("no ratings in the file", path=path)
    rating = to_number(raw, "rating", path)
    check_ratings(rating, raw, path, (1, 5))
    timestamp = to_number(raw, "timestamp", path, integer=True)
    ratings = pd.DataFrame({"user_id": plain_ids(raw, "user_id", path), "item_id": plain_ids(raw, "item_id", path),
                            "rating": rating, "timestamp": timestamp})

    upath = folder / "users.dat"
    users = read_delimited(upath, "::", ["user_id", "gender", "age", "occupation", "zip"],
                           required=["user_id", "gender", "age", "occupation"], encoding="latin-1")
    to_number(users, "age", upath, integer=True)
    to_number(users, "occupation", upath, integer=True)
    users = pd.DataFrame({
        "user_id": plain_ids(users, "user_id", upath),
        "gender": users["gender"].str.strip(),
        "age": users["age"].str.strip(),
        "occupation": users["occupation"].str.strip(),
        "zip_prefix": users["zip"].str.strip().str[:1].replace("", pd.NA),
    })

    items = ml1m_items(folder)
    item_schema: dict[str, AttributeSpec | str] = {
        "title": "text", "year": AttributeSpec("numeric", buckets=8), "genres": "multi"}
    meta: dict[str, object] = {"source": str(folder), "new_item_rule": dict(ML1M_NEW_ITEM_RULE)}
    if extra_path is not None:
        items = items.merge(_read_imdb(extra_path), on="item_id", how="left")
        for column in ("imdb_genres", "directors", "actors"):
            items[column] = items[column].map(lambda v: v if isinstance(v, tuple) else None)
        item_schema.update({"rate": "categorical", "imdb_genres": "multi", "directors": "multi", "actors": "multi"})
        meta["imdb_source"] = str(extra_path)
    return RatingDataset.from_frames(
        "ml-1m-imdb" if imdb_features else "ml-1m", ratings, users, items,
        user_schema={"gender": "categorical", "age": "categorical", "occupation": "categorical",
                     "zip_prefix": "categorical"},
        item_schema=item_schema, rating_scale=(1.0, 5.0), duplicates="error", source=path, meta=meta,
    )


def ml1m_items(folder: str | Path) -> pd.DataFrame:
    """``movies.dat`` alone (item_id, title, year, genres): what showing titles needs, without the ratings."""
    mpath = Path(folder) / "movies.dat"
    movies = read_delimited(mpath, "::", ["item_id", "title", "genres"], required=["item_id", "title"],
                            encoding="latin-1")
    titles = movies["title"].str.strip()
    return pd.DataFrame({
        "item_id": plain_ids(movies, "item_id", mpath),
        "title": titles,
        "year": pd.to_numeric(titles.str.extract(_YEAR, expand=False), errors="coerce").astype("Float64"),
        "genres": [_split(v, "|") for v in movies["genres"]],
    })


def _split(value: object, sep: str) -> tuple[str, ...] | None:
    """A multi-valued cell: missing, empty or "N/A" -> None, else the stripped non-empty parts."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value in ("", "N/A"):
        return None
    parts = tuple(p.strip() for p in value.split(sep) if p.strip())
    return parts or None


def _imdb_file(folder: Path, imdb_folder: str | Path | None) -> Path:
    """MeLU's file: the explicit folder, else ``ml-1m-melu-extra`` beside or inside the ML-1M folder."""
    if imdb_folder is not None:
        candidates = [Path(imdb_folder)]
    else:
        candidates = [folder.parent / IMDB_FOLDER, folder / IMDB_FOLDER, folder]
    for candidate in candidates:
        if (candidate / IMDB_FILE).exists():
            return candidate / IMDB_FILE
    raise DataNotFoundError(
        f"MeLU's IMDb features ({IMDB_FILE}) not found (looked in {', '.join(str(c) for c in candidates)}). "
        f"Pass imdb_folder=..., or put the '{IMDB_FOLDER}/' folder next to 'ml-1m/' under the data dir; "
        "it comes from the MeLU repository (hoyeoplee/MeLU, movielens/ml-1m/) and has no official download."
    )


def _read_imdb(path: Path) -> pd.DataFrame:
    raw = read_delimited(path, "::", _IMDB_FIELDS, required=["item_id"], encoding="utf-8")
    ids = plain_ids(raw, "item_id", path)
    if ids.duplicated().any():
        row = int(np.flatnonzero(ids.duplicated().to_numpy())[0])
        raise DataError(f"movie id {ids.iloc[row]} appears twice", path=path, line=row + 1, field="item_id")
    rate = raw["rate"].str.strip()
    return pd.DataFrame({
        "item_id": ids,
        "rate": rate.where(~rate.isin(["", "N/A"]), pd.NA),
        "imdb_genres": [_split(v, ", ") for v in raw["genre"]],
        "directors": [_split(v, ", ") for v in raw["director"]],
        "actors": [_split(v, ", ") for v in raw["actors"]],
    })
