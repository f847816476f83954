"""The checks of a request's values that :class:`~metarec.serve.recommender.ColdStartRecommender` makes
before anything is computed: each failure a :class:`DataError` naming the field (HTTP 422 at that field)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from metarec.data.encoding import ColumnEncoding
from metarec.errors import DataError

# a new user's support: {item_id: rating} (or confidence), or an implicit model's item ids
Support = Mapping[object, float] | Iterable[object]
WRONG_FEEDBACK = {  # a request field of the other kind of feedback than the model's: why it is refused
    "items": "this model was trained on ratings: send ratings, a list of {item_id, rating}; items (ids without "
             "ratings) are for implicit-feedback models",
    "ratings": "this model was trained on implicit feedback (plays, clicks): send items, the ids of the items the "
               "user interacted with or liked (optionally confidence, one number per item), not ratings",
}


def check_count(value: object, name: str) -> None:
    """``k`` / ``n`` of a request: a positive integer (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}", field=name)


def check_ids(value: object, name: str) -> None:
    """A collection of ids, not one string (which would iterate as its characters)."""
    if isinstance(value, (str, bytes)):
        raise DataError(f"{name} must be a collection of item ids, not one string", field=name)


def rating_in_scale(value: object, scale: tuple[float, float], field: str, of: str = "") -> float:
    """The one check of a rating's range: a finite number within the rating scale, else a :class:`DataError`
    naming ``field``; ``of`` says whose rating it is in the message (" of item '50'")."""
    low, high = scale
    try:
        r = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"rating {value!r}{of} is not a number", field=field) from None
    if not np.isfinite(r) or r < low or r > high:
        raise DataError(f"rating {value!r}{of} is not in [{low:g}, {high:g}]", field=field)
    return r


def support_pairs(ratings: object, implicit: bool) -> list[tuple[object, object]]:
    """A new user's support as (item id, value) pairs, in the form the model takes: a mapping
    ``{item_id: rating}`` for a rating model; for an implicit-feedback model (plays, clicks) the ids of the
    items they interacted with (each a positive of confidence 1) or ``{item_id: confidence}``."""
    if isinstance(ratings, Mapping):
        return list(ratings.items())
    if not implicit:
        raise DataError("this model was trained on ratings: give {item_id: rating}; a list of item ids without "
                        "ratings is what an implicit-feedback model takes", field="ratings")
    if isinstance(ratings, (str, bytes)) or not isinstance(ratings, Iterable):
        raise DataError("items must be a collection of item ids (or {item_id: confidence}), not one string",
                        field="items")
    pairs, seen = [], set()
    for position, item_id in enumerate(ratings):
        if str(item_id) in seen:
            raise DataError(f"item {item_id!r} is given more than once", field=f"items.{position}")
        seen.add(str(item_id))
        pairs.append((item_id, 1.0))
    return pairs


def confidence_in_scale(value: object, high: float, field: str, of: str = "") -> float:
    """An implicit positive's confidence: a finite number in (0, ``high``], the confidences the model was
    trained on (1 for every positive of a dataset without counts), else a :class:`DataError` naming ``field``."""
    try:
        c = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"confidence {value!r}{of} is not a number", field=field) from None
    if not np.isfinite(c) or c <= 0 or c > high:
        raise DataError(f"confidence {value!r}{of} is not in (0, {high:g}] (the confidences this model was trained on)",
                        field=field)
    return c


def finite_number(value: object, what: str, field: str) -> float:
    """A numeric attribute's value: a finite number, or a string that reads as one ("30"); not a bool,
    NaN or inf (None, meaning unknown, is the caller's to allow)."""
    number = None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise DataError(f"{what} must be a finite number, got {value!r}", field=field)
    return number


def categorical_value(value: object, known: tuple[str, ...], what: str, field: str) -> object:
    """A categorical attribute's value: text, or a number only where the trained values are numbers written
    as text (occupation codes). A value of the wrong type (``gender: 12345``, ``true``, ``1.5``) is refused
    naming the known values; an unseen value of the right type is a new category (encoded as unknown)."""
    numeric_codes = bool(known) and all(v.lstrip("-").isdigit() for v in known)
    if isinstance(value, str) or (numeric_codes and isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
        return value
    shown = ", ".join(repr(v) for v in known[:12]) + (", ..." if len(known) > 12 else "")
    raise DataError(f"{what} takes one of {shown} (text), got {value!r}", field=field)


def attribute_record(attributes: object, columns: Mapping[str, ColumnEncoding], what: str,
                     others: Iterable[str] = ()) -> dict[str, object] | None:
    """A new user's or item's attributes (``what``: "user" or "item"), checked by name and shape: a silently
    ignored typo would go unnoticed. ``columns``: those the model reads; ``others``: names also allowed
    (an item's display metadata, such as its title), which must hold a scalar or a list of scalars."""
    if attributes is None:
        return None
    prefix = "user" if what == "user" else "attributes"
    if not isinstance(attributes, Mapping):
        raise DataError(f"{what} attributes must be a mapping {{name: value}}", field=prefix)
    allowed = set(columns) | set(others)
    unknown = sorted(set(attributes) - allowed)
    if unknown:
        raise DataError(f"unknown {what} attribute(s) {unknown}; the model reads {sorted(columns)}"
                        + (f", and the catalogue also has {sorted(set(others) - set(columns))}" if others else ""),
                        field=prefix)
    record: dict[str, object] = {}
    for name, value in attributes.items():
        field, label = f"{prefix}.{name}", f"{what} attribute {name!r}"
        column = columns.get(name)
        kind = None if column is None else column.kind
        if kind == "multi":
            value = None if value is None else [value] if isinstance(value, (str, int, float)) else list(value)
        elif kind is None and isinstance(value, (list, tuple)):
            if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
                raise DataError(f"{label} takes a list of texts or numbers", field=field)
            value = list(value)
        elif isinstance(value, (list, tuple, dict)):
            raise DataError(f"{label} takes one value, got {type(value).__name__}", field=field)
        elif kind == "numeric" and value is not None:
            value = finite_number(value, label, field)
        elif kind == "categorical" and value is not None:
            value = categorical_value(value, column.values, label, field)
        elif kind is None and isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{label} must be finite, got {value!r}", field=field)
        record[name] = value
    return record
