"""Tiny synthetic data for the model contract: every attribute kind, with and without user attributes."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.data.encoding import FeatureEncoder
from metarec.data.synthetic import SyntheticConfig, make_synthetic
from metarec.tasks.features import FeatureSpace, encode_dataset


@pytest.fixture(scope="session")
def tiny_dataset():
    return make_synthetic(SyntheticConfig(n_users=30, n_items=25, n_tags=6, ratings_per_user=(5, 15), seed=3)).dataset


@pytest.fixture(scope="session")
def space(tiny_dataset) -> FeatureSpace:
    """Encoders fitted on every user and on four fifths of the items (the rest are new: no id vector)."""
    n_items = tiny_dataset.n_items
    return encode_dataset(tiny_dataset, np.arange(tiny_dataset.n_users), np.arange(n_items - n_items // 5))


@pytest.fixture(scope="session")
def space_without_user_attributes(space, tiny_dataset) -> FeatureSpace:
    """The same items, users without any attribute (a dataset such as Last.fm)."""
    encoder = FeatureEncoder.fit(tiny_dataset.users, {})
    return FeatureSpace(encoder, space.item_encoder, encoder.transform(tiny_dataset.users), space.item_features,
                        space.known_items)
