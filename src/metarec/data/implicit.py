"""Implicit feedback: keep the positive interactions and turn their strength into a confidence weight.

Papers on top-N recommendation (NCF and its successors) binarise MovieLens: every rating, or every
rating at or above a threshold, is a positive, and the items a user never touched are the negatives.
Rows below the threshold are dropped rather than kept as negatives, since a low rating is still a
sign of interest in the item; negatives are sampled from the unobserved items instead
(:mod:`metarec.tasks.negatives`).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Confidence = Literal["binary", "log"]
CONFIDENCES = ("binary", "log")


def is_implicit(dataset: RatingDataset) -> bool:
    """Whether ``dataset`` holds positives with confidences (made by :func:`to_implicit`), not ratings."""
    return dataset.meta.get("feedback") == "implicit"


def to_implicit(
    dataset: RatingDataset,
    *,
    threshold: float | None = None,
    confidence: Confidence = "binary",
    counts: pd.Series | np.ndarray | None = None,
) -> RatingDataset:
    """The positives of ``dataset``, with their confidence (>= 1) in the ``rating`` column.

    A positive is every interaction (``threshold`` None) or one whose rating is >= ``threshold``; other
    rows are dropped. ``confidence``: ``binary`` gives every positive 1.0; ``log`` gives
    ``1 + log1p(count / median)``, where ``count`` is ``counts`` (one non-negative value per row of
    ``dataset.ratings``, in row order: Last.fm play counts) or else the rating itself, and ``median`` is
    the median of the kept positives' positive counts (1 if there is none). Log damping keeps a user
    who played one artist 10,000 times from drowning everything else. The rating scale becomes
    ``(0, max confidence)``; users, items (all of them, even those left without interactions), their
    schemas and vocabularies are kept, so indices stay valid.
    """
    if confidence not in CONFIDENCES:
        raise ConfigError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {confidence!r}")
    ratings = dataset.ratings
    source = dataset.meta.get("source", dataset.name)
    strength = _counts(counts, len(ratings), source)
    if strength is None:
        strength = ratings["rating"].to_numpy(dtype=np.float64)
    keep = np.ones(len(ratings), bool)
    if threshold is not None:
        threshold = float(threshold)
        if not np.isfinite(threshold):
            raise ConfigError(f"positive_threshold must be a finite number, got {threshold!r}")
        keep = ratings["rating"].to_numpy(dtype=np.float64) >= threshold
    if not keep.any():
        why = ("the dataset has no interactions" if not len(ratings) else
               f"positive_threshold {threshold:g} is above every rating (highest {float(ratings['rating'].max()):g})")
        raise DataError(f"no positive interaction left: {why}", path=str(source), field="rating")
    dropped = int((~keep).sum())
    if dropped:
        log.info("%s: %d of %d interactions below the positive threshold %g dropped (%d positives kept)",
                 dataset.name, dropped, len(ratings), threshold, int(keep.sum()))

    kept = ratings.loc[keep, ["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    if confidence == "binary":
        weight = np.ones(len(kept), np.float32)
    else:
        c = strength[keep]
        positive = c[c > 0]
        median = float(np.median(positive)) if len(positive) else 1.0
        weight = (1.0 + np.log1p(c / median)).astype(np.float32)
    kept["rating"] = weight
    meta = {**dict(dataset.meta), "feedback": "implicit", "positive_threshold": threshold, "confidence": confidence}
    return RatingDataset.from_frames(
        dataset.name, kept, dataset.users, dataset.items,
        user_schema=dataset.user_schema, item_schema=dataset.item_schema,
        # the stored float32 maximum, so no rounding can put a confidence outside the scale
        rating_scale=(0.0, float(weight.max())), duplicates="error", source=source, meta=meta,
    )


def _counts(counts: pd.Series | np.ndarray | None, n_rows: int, source: object) -> np.ndarray | None:
    """``counts`` as float64, one per ratings row, checked: the caller's alignment is by position."""
    if counts is None:
        return None
    values = pd.to_numeric(pd.Series(np.asarray(counts).ravel()), errors="coerce").to_numpy(dtype=np.float64)
    if len(values) != n_rows:
        raise DataError(f"counts has {len(values)} values for {n_rows} interactions (one per ratings row)",
                        path=str(source), field="counts")
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"count {np.asarray(counts).ravel()[row]!r} is not a finite number", path=str(source),
                        line=row + 1, field="counts")
    if (values < 0).any():
        row = int(np.flatnonzero(values < 0)[0])
        raise DataError(f"count {values[row]:g} is negative", path=str(source), line=row + 1, field="counts")
    return values
