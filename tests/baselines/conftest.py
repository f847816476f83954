"""Synthetic datasets whose ratings follow a known structure, so each baseline's claim can be checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.data.dataset import RatingDataset
from metarec.tasks import ColdStartSplit, SplitConfig, make_split

GENRES = np.array(list("ABCDE"))
TAGS = list("pqrstuvw")


def structured_dataset(kind: str, seed: int = 0, n_users: int = 600, n_items: int = 240, per_user: int = 60) -> RatingDataset:
    """``additive``: r = 3 + b_u + b_i exactly; ``rank2``: + a rank-2 interaction, noise 0.1;
    ``attributes``: item effects come from genre and tags only, plus each user's taste per genre.

    The rating scale is wide so that no rating is clipped: the structure holds exactly.
    """
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, len(GENRES), n_items)
    item_tags = [tuple(rng.choice(TAGS, rng.integers(1, 4), replace=False)) for _ in range(n_items)]
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)], "genre": GENRES[genre], "tags": item_tags})
    b_u, b_i = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
    u = np.repeat(np.arange(n_users), per_user)
    i = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    if kind == "additive":
        r = 3 + b_u[u] + b_i[i]
    elif kind == "rank2":
        p, q = rng.normal(0, 1, (n_users, 2)), rng.normal(0, 1, (n_items, 2))
        r = 3 + b_u[u] + b_i[i] + (p[u] * q[i]).sum(1) + rng.normal(0, 0.1, len(u))
    elif kind == "attributes":
        genre_effect = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
        tag_effect = dict(zip(TAGS, rng.normal(0, 0.7, len(TAGS))))
        tags_mean = np.array([np.mean([tag_effect[t] for t in ts]) for ts in item_tags])
        taste = rng.normal(0, 0.7, (n_users, len(GENRES)))
        r = 3 + b_u[u] + genre_effect[genre[i]] + tags_mean[i] + taste[u, genre[i]] + rng.normal(0, 0.3, len(u))
    else:
        raise ValueError(kind)
    ratings = pd.DataFrame({
        "user_id": [f"u{x}" for x in u], "item_id": [f"i{x}" for x in i], "rating": r,
        "timestamp": rng.integers(0, 10**6, len(u)),
    })
    frame = RatingDataset.from_frames(kind, ratings, None, items, rating_scale=(-20.0, 20.0))
    # Known answers, re-indexed from generator ids to the dataset's internal indices.
    user_of_idx = np.array([int(x[1:]) for x in frame.users.index])
    item_of_idx = np.array([int(x[1:]) for x in frame.items.index])
    object.__setattr__(frame, "truth", {"b_u": b_u[user_of_idx], "b_i": b_i[item_of_idx]})
    return frame


def structured_split(kind: str) -> ColdStartSplit:
    # Half the items new, so every user has enough new-item ratings for the new-item scenarios.
    return make_split(structured_dataset(kind), SplitConfig(new_item_fraction=0.5, seed=0))


@pytest.fixture(scope="session")
def additive_split() -> ColdStartSplit:
    return structured_split("additive")


@pytest.fixture(scope="session")
def rank2_split() -> ColdStartSplit:
    return structured_split("rank2")


@pytest.fixture(scope="session")
def attribute_split() -> ColdStartSplit:
    return structured_split("attributes")
