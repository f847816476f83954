"""What meta-training tells a questionnaire about a split: the trained catalogue (the items it may show),
per-item rating statistics, and the newcomer-like panel (training users as light as the newcomers)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from metarec.data.vocab import Vocabulary
from metarec.tasks import ColdStartSplit


def training_counts(split: ColdStartSplit) -> np.ndarray:
    """Ratings per item index that meta-training used (support and query of meta-train tasks): the
    popularity a questionnaire breaks ties by."""
    rows = split.train_ratings()
    return np.bincount(rows["item_idx"].to_numpy(np.int64), minlength=split.dataset.n_items).astype(np.int64)


def item_statistics(split: ColdStartSplit) -> pd.DataFrame:
    """Training rating count, mean and standard deviation per item index (meta-train users only)."""
    train = split.train_ratings()
    stats = train.groupby("item_idx")["rating"].agg(["count", "mean", "std"])
    return stats.reindex(np.arange(split.dataset.n_items)).fillna({"count": 0, "mean": np.nan, "std": 0.0})


def trained_catalogue(split: ColdStartSplit) -> np.ndarray:
    """The items a questionnaire may show: those meta-training saw (sorted item indices)."""
    return np.flatnonzero(training_counts(split) > 0)


def newcomer_like_ratings(split: ColdStartSplit) -> pd.DataFrame:
    """Meta-train ratings of the users with as many ratings as the validation newcomers (min to max):
    who knows which item among people like the ones onboarding will meet. A heavy user knows far
    more rarely rated items than a newcomer does."""
    frame = split.train_ratings()
    held_out = split.validation.get("new_users")
    if held_out is None or not len(held_out):
        return frame
    sizes = held_out.support_sizes + held_out.query_sizes
    n = frame.groupby("user_idx")["rating"].transform("size")
    return frame[(n >= sizes.min()) & (n <= sizes.max())]


def item_indices(vocab: Vocabulary, ids: Iterable[object]) -> tuple[np.ndarray, list[str]]:
    """The catalogue indices of the known ``ids`` (a shown or rated list) and the unknown ids, each once."""
    ids = [str(i) for i in ids]
    index = vocab.indices(ids, strict=False)
    return index[index >= 0], list(dict.fromkeys(i for i, j in zip(ids, index) if j < 0))
