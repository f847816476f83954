"""Batch recommendation from a JSON-lines file, and tables written whole by their suffix.

Each line is one new user, the body of ``POST /v1/recommend`` (``ratings``, or for an implicit-feedback
model ``items`` and optional ``confidence``; optional ``user``, ``k``, ``exclude_rated``) plus an optional ``user_id`` naming the row in the output (else the line number).
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
from metarec.serve.checks import WRONG_FEEDBACK
from metarec.serve.recommender import ColdStartRecommender, RecommendQuery

SUFFIXES = (".parquet", ".csv", ".jsonl")
CHUNK = 256
KEYS = {"ratings", "user", "k", "exclude_rated", "user_id"}
IMPLICIT_KEYS = {"items", "confidence", "user", "k", "exclude_rated", "user_id"}


def read_queries(path: str | Path, implicit: bool = False) -> Iterator[tuple[int, str, RecommendQuery]]:
    """(line number, user_id, query) of each non-blank line; :class:`DataError` naming the line and field
    for a line that is not such a body (``implicit``: the body for an implicit-feedback model)."""
    path = Path(path)
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            if text.strip():
                user_id, query = _query(text, path, number, implicit)
                yield number, user_id, query


def _positives(body: dict, path: Path, line: int) -> dict[str, object]:
    """An implicit line's ``items`` (and ``confidence``, one per item; default 1) as ``{item_id: confidence}``."""
    items, confidence = body.get("items"), body.get("confidence")
    if not isinstance(items, list) or not items:
        raise DataError("items must be a non-empty list of item ids", path=path, line=line, field="items")
    if confidence is not None and (not isinstance(confidence, list) or len(confidence) != len(items)):
        raise DataError("confidence must be a list of one number per item", path=path, line=line, field="confidence")
    out: dict[str, object] = {}
    for i, item_id in enumerate(items):
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or str(item_id) == "":
            raise DataError(f"an item id must be a text or an integer, got {item_id!r}", path=path, line=line,
                            field=f"items.{i}")
        if str(item_id) in out:
            raise DataError(f"item {str(item_id)!r} is given more than once", path=path, line=line, field=f"items.{i}")
        out[str(item_id)] = 1.0 if confidence is None else confidence[i]
    return out


def _query(text: str, path: Path, line: int, implicit: bool = False) -> tuple[str, RecommendQuery]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise DataError(f"not valid JSON ({exc})", path=path, line=line) from None
    if not isinstance(body, dict):
        raise DataError("expected a JSON object, the body of POST /v1/recommend", path=path, line=line)
    wrong = "ratings" if implicit else "items"
    if wrong in body:
        raise DataError(WRONG_FEEDBACK[wrong], path=path, line=line, field=wrong)
    keys = IMPLICIT_KEYS if implicit else KEYS
    extra = sorted(set(body) - keys)
    if extra:
        raise DataError(f"unknown key(s) {extra}; expected {sorted(keys)}", path=path, line=line, field=extra[0])
    return _rest(body, path, line, _positives(body, path, line) if implicit else _ratings(body, path, line))


def _ratings(body: dict, path: Path, line: int) -> dict[str, object]:
    """An explicit line's ``ratings`` as ``{item_id: rating}`` (each item once)."""
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
    return pairs


def _rest(body: dict, path: Path, line: int, pairs: dict[str, object]) -> tuple[str, RecommendQuery]:
    """The line's user id and query: its support ``pairs`` with ``user``, ``k`` and ``exclude_rated``."""
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
    implicit = recommender.feedback == "implicit"
    support = "items" if implicit else "ratings"  # the field an unknown-ids error is about

    def answer() -> None:
        results = recommender.recommend_many([q for _, _, q in chunk], batch_size=batch_size)
        for (line, user_id, _), result in zip(chunk, results):
            if isinstance(result, MetarecError):
                field = getattr(result, "field", None)
                message = str(result).removeprefix(f"field '{field}': ") if field else str(result)
                raise DataError(message, path=path, line=line, field=field or support)
            rows.extend((user_id, rank, item["item_id"], float(item["score"]))
                        for rank, item in enumerate(result.items, 1))
        chunk.clear()

    for entry in read_queries(path, implicit):
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
