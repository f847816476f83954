"""A small random dataset with every attribute kind, split into tasks: fast enough for exhaustive checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.data.dataset import RatingDataset
from metarec.tasks import SplitConfig, make_split
from metarec.tasks.features import encode_features
from tiny_data import random_ratings


def tiny_dataset(seed: int = 0, n_users: int = 60, n_items: int = 80) -> RatingDataset:
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n_users)],
        "gender": rng.choice(["F", "M"], n_users),
        "age": rng.integers(18, 70, n_users).astype(float),
        "hobbies": [tuple(rng.choice(list("abcdef"), rng.integers(1, 4), replace=False)) for _ in range(n_users)],
    })
    items = pd.DataFrame({
        "item_id": [f"i{j}" for j in range(n_items)],
        "genre": rng.choice(["drama", "comedy", "action"], n_items),
        "tags": [tuple(rng.choice(list("pqrstuvw"), rng.integers(1, 4), replace=False)) for _ in range(n_items)],
        "year": rng.integers(1990, 2000, n_items).astype(float),
    })
    ratings = random_ratings(rng, n_users, n_items, (15, 40))
    return RatingDataset.from_frames("tiny", ratings, users, items, rating_scale=(1.0, 5.0),
                                     meta={"new_item_rule": {"release_year_from": 1998}})


@pytest.fixture(scope="session")
def tiny_split():
    split = make_split(tiny_dataset(), SplitConfig(seed=0, test_user_fraction=0.2, val_user_fraction=0.2))
    return split, encode_features(split)


@pytest.fixture(scope="session")
def tiny_split_new_items():
    """The same data with items from 1995 on new (half the catalogue), so new-item scenarios have tasks."""
    split = make_split(tiny_dataset(), SplitConfig(seed=0, test_user_fraction=0.2, val_user_fraction=0.2,
                                                   new_item_year=1995))
    return split, encode_features(split)
