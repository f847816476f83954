"""HetRec 2011 Last.fm 2K: play counts turned into 1-5 ratings, artists described by their top tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.data.loaders._text import read_delimited, to_number
from metarec.errors import DataError

TOP_TAGS = 10


def playcounts_to_ratings(users: pd.Series, counts: pd.Series) -> pd.Series:
    """Per-user quintile of the play count: ``rating = ceil(5 * percentile_rank)``, in 1..5.

    ``percentile_rank`` is the play count's rank among *that user's* artists divided by how many
    artists the user has (ties share their average rank), so it lies in (0, 1]. A user's top fifth
    of artists get 5, the next fifth 4, ..., the least-played fifth 1; a user with a single artist
    gives it 5. Ranking within each user removes the huge spread in how much people listen, which
    is why raw counts (1 .. 352,698) make poor rating targets.
    """
    pct = counts.groupby(users.to_numpy(), sort=False).rank(method="average", pct=True)
    return np.ceil(pct.to_numpy(dtype=np.float64) * 5.0 - 1e-9).clip(1, 5).astype(np.float64)


def load_lastfm(folder: str | Path, *, top_tags: int = TOP_TAGS, raw_counts: bool = False) -> RatingDataset:
    """Last.fm 2K: ``user_artists.dat`` -> ratings, ``artists.dat`` + tags -> item attributes.

    Files are tab-separated with one header line. Ratings come from play counts through
    :func:`playcounts_to_ratings` (per-user percentile rank cut into quintiles -> 1..5), or, with
    ``raw_counts``, are the play counts themselves on the scale ``(0, max count)``: the confidence of
    implicit feedback (:func:`metarec.data.implicit.to_implicit`) needs the counts, not their ranks. Items are
    every artist in ``artists.dat`` with ``name`` (text) and ``tags`` (multi): the artist's
    ``top_tags`` most frequent tag values over all users' assignments in ``user_taggedartists.dat``
    (ties broken alphabetically; names from ``tags.dat``, latin-1), or missing when never tagged.
    There are no user demographics in this dataset (its side information is the friend graph, not
    used here), so the users table has no attributes, and no rating timestamps (they stay missing).
    """
    folder = Path(folder)
    path = folder / "user_artists.dat"
    raw = read_delimited(path, "\t", ["user_id", "item_id", "weight"], required=["user_id", "item_id", "weight"],
                         header=True)
    to_number(raw, "user_id", path, integer=True)
    to_number(raw, "item_id", path, integer=True)
    weight = to_number(raw, "weight", path, integer=True)
    if (weight < 0).any():
        row = int(np.flatnonzero((weight < 0).to_numpy())[0])
        raise DataError(f"play count {raw['weight'].iloc[row]!r} is negative", path=path,
                        line=row + raw.attrs["line_offset"], field="weight")
    user_ids = raw["user_id"].str.strip()
    ratings = pd.DataFrame({
        "user_id": user_ids,
        "item_id": raw["item_id"].str.strip(),
        "rating": weight.to_numpy(dtype=np.float64) if raw_counts else playcounts_to_ratings(user_ids, weight),
        # an explicit all-missing column gives the same dtype as a saved-and-reloaded dataset
        "timestamp": np.full(len(raw), np.nan),
    })

    apath = folder / "artists.dat"
    artists = read_delimited(apath, "\t", ["item_id", "name", "url", "picture_url"], required=["item_id"],
                             header=True, optional_trailing=2)
    to_number(artists, "item_id", apath, integer=True)
    items = pd.DataFrame({"item_id": artists["item_id"].str.strip(), "name": artists["name"].str.strip()})
    tags = _top_tags(folder, top_tags)
    items["tags"] = items["item_id"].map(tags)
    items["tags"] = items["tags"].map(lambda v: v if isinstance(v, tuple) else None)

    return RatingDataset.from_frames(
        "lastfm", ratings, None, items,
        item_schema={"name": "text", "tags": "multi"},
        # the float32-stored maximum: a count past 2**24 rounds, and must stay inside its own scale
        rating_scale=(0.0, float(np.float32(weight.max())) if len(weight) else 1.0) if raw_counts else (1.0, 5.0),
        duplicates="error", source=path,
        meta={
            "source": str(folder),
            "new_item_rule": {"first_rating_fraction": 0.2},
            "rating_rule": "raw play count" if raw_counts else
                           "per-user percentile rank of the play count, cut into quintiles -> 1..5",
            "top_tags": top_tags,
        },
    )


def _top_tags(folder: Path, top: int) -> dict[str, tuple[str, ...]]:
    """artist id -> its ``top`` most assigned tag values (count descending, then alphabetical)."""
    tpath = folder / "tags.dat"
    tags = read_delimited(tpath, "\t", ["tag_id", "tag"], required=["tag_id"], header=True, encoding="latin-1")
    to_number(tags, "tag_id", tpath, integer=True)
    names = dict(zip(tags["tag_id"].str.strip(), tags["tag"].str.strip()))
    upath = folder / "user_taggedartists.dat"
    assigned = read_delimited(upath, "\t", ["user_id", "item_id", "tag_id", "day", "month", "year"],
                              required=["user_id", "item_id", "tag_id"], header=True)
    tag_ids = assigned["tag_id"].str.strip()
    unknown = ~tag_ids.isin(names.keys())
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(f"tag id {tag_ids.iloc[row]!r} is not in tags.dat", path=upath,
                        line=row + assigned.attrs["line_offset"], field="tag_id")
    frame = pd.DataFrame({"item_id": assigned["item_id"].str.strip(), "tag": tag_ids.map(names)})
    frame = frame[frame["tag"].notna() & (frame["tag"] != "")]
    counts = frame.groupby(["item_id", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["item_id", "n", "tag"], ascending=[True, False, True], kind="stable")
    counts = counts.groupby("item_id", sort=False).head(top)
    return {item: tuple(group) for item, group in counts.groupby("item_id", sort=False)["tag"]}
