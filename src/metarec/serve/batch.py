"""Batch recommendation from a JSON-lines file, and tables written whole by their suffix.

Each line is one new user, the body of ``POST /v1/recommend`` (``ratings``, optional ``user``, ``k``,
``exclude_rated``) plus an optional ``user_id`` naming the row in the output (else the line number).
This module only parses the lines' structure; the values are checked by the recommender, and any
error names the line and the field. Users are answered by the vectorised
:meth:`~metarec.serve.recommender.ColdStartRecommender.recommend_many`, a chunk at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pandas as pd

from metarec._io import atomic_path
from metarec.errors import DataError, MetarecError
from metarec.serve.recommender import ColdStartRecommender, RecommendQuery

SUFFIXES = (".parquet", ".csv", ".jsonl")
CHUNK = 256
KEYS = {"ratings", "user", "k", "exclude_rated", "user_id"}


def read_queries(path: str | Path) -> Iterator[tuple[int, str, RecommendQuery]]:
    """(line number, user_id, query) of each non-blank line; :class:`DataError` naming the line and field
    for a line that is not such a body."""
    path = Path(path)
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            if text.strip():
                user_id, query = _query(text, path, number)
                yield number, user_id, query


def _query(text: str, path: Path, line: int) -> tuple[str, RecommendQuery]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path, line=line) from None
    if not isinstance(body, dict):
        raise DataError("expected a JSON object, the body of POST /v1/recommend", path=path, line=line)
    extra = sorted(set(body) - KEYS)
    if extra:
        raise DataError(f"unknown key(s) {extra}; expected {sorted(KEYS)}", path=path, line=line, field=extra[0])
    ratings = body.get("ratings")
    if not isinstance(ratings, list) or not ratings:
        raise DataError("ratings must be a non-empty list of {item_id, rating}", path=path, line=line, field="ratings")
    pairs: dict[str, object] = {}
    for i, entry in enumerate(ratings):
        if not isinstance(entry, dict) or set(entry) != {"item_id", "rating"}:
            raise DataError("each rating is an object {item_id, rating}", path=path, line=line, field=f"ratings.{i}")
        item_id = entry["item_id"]
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or str(item_id) == "":
            raise DataError(f"item_id must be a text or an integer, got {item_id!r}", path=path, line=line,
                            field=f"ratings.{i}.item_id")
        if str(item_id) in pairs:
            raise DataError(f"item_id {str(item_id)!r} is rated more than once", path=path, line=line,
                            field=f"ratings.{i}.item_id")
        pairs[str(item_id)] = entry["rating"]
    exclude = body.get("exclude_rated", True)
    if not isinstance(exclude, bool):
        raise DataError(f"exclude_rated must be true or false, got {exclude!r}", path=path, line=line,
                        field="exclude_rated")
    user_id = body.get("user_id", line)
    if isinstance(user_id, (bool, float, dict, list)) or user_id is None:
        raise DataError(f"user_id must be a text or an integer, got {user_id!r}", path=path, line=line, field="user_id")
    return str(user_id), RecommendQuery(pairs, body.get("user"), body.get("k", 10), exclude)  # type: ignore[arg-type]


def recommend_file(recommender: ColdStartRecommender, path: str | Path, *, batch_size: int = 16) -> pd.DataFrame:
    """Top-k of every user of a JSON-lines file: one row per (``user_id``, ``rank``, ``item_id``, ``score``).
    The first bad line stops it (:class:`DataError` naming the line and the field), nothing is returned."""
    rows: list[tuple[str, int, str, float]] = []
    chunk: list[tuple[int, str, RecommendQuery]] = []

    def answer() -> None:
        results = recommender.recommend_many([q for _, _, q in chunk], batch_size=batch_size)
        for (line, user_id, _), result in zip(chunk, results):
            if isinstance(result, MetarecError):
                field = getattr(result, "field", None)
                message = str(result).removeprefix(f"field '{field}': ") if field else str(result)
                raise DataError(message, path=path, line=line, field=field or "ratings")
            rows.extend((user_id, rank, item["item_id"], float(item["score"]))
                        for rank, item in enumerate(result.items, 1))
        chunk.clear()

    for entry in read_queries(path):
        chunk.append(entry)
        if len(chunk) >= CHUNK:
            answer()
    if chunk:
        answer()
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])


def write_table(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write ``frame`` as Parquet, CSV or JSON lines (by ``out``'s suffix), whole or not at all."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise MetarecError(f"{out}: unknown output format {out.suffix!r}; use one of {', '.join(SUFFIXES)}")
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif suffix == ".csv":
            _flat(frame).to_csv(tmp, index=False)
        else:
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    return out


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """A CSV cannot hold a list per cell: a ``vector`` column becomes columns ``v0``, ``v1``, ..."""
    if "vector" not in frame.columns:
        return frame
    vectors = pd.DataFrame(frame["vector"].tolist(), index=frame.index).add_prefix("v")
    return pd.concat([frame.drop(columns="vector"), vectors], axis=1)
