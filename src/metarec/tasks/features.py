"""Encoded user and item attributes for a split, fitted on what meta-training may see.

Encoders are fitted on the meta-train users' and the meta-train items' attributes only: a value first
seen on a test user or a new item maps to "unknown", as it would in production.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec.data.dataset import RatingDataset
from metarec.data.encoding import FeatureEncoder, FeatureTable
from metarec.tasks.split import ColdStartSplit


@dataclass(frozen=True)
class FeatureSpace:
    """Encoders plus the encoded tables of every user and every catalogue item (by internal index)."""

    user_encoder: FeatureEncoder
    item_encoder: FeatureEncoder
    user_features: FeatureTable
    item_features: FeatureTable
    known_items: torch.Tensor  # [n_items] bool: items meta-training saw

    def to(self, device: torch.device | str) -> "FeatureSpace":
        return FeatureSpace(self.user_encoder, self.item_encoder, self.user_features.to(device),
                            self.item_features.to(device), self.known_items.to(device))


def encode_features(split: ColdStartSplit) -> FeatureSpace:
    return encode_dataset(split.dataset, split.train_users, split.train_items())


def encode_dataset(dataset: RatingDataset, train_users: np.ndarray, train_items: np.ndarray) -> FeatureSpace:
    user_encoder = FeatureEncoder.fit(dataset.users, dataset.user_schema, rows=train_users)
    item_encoder = FeatureEncoder.fit(dataset.items, dataset.item_schema, rows=train_items)
    known = torch.zeros(dataset.n_items, dtype=torch.bool)
    known[torch.as_tensor(train_items, dtype=torch.long)] = True
    return FeatureSpace(
        user_encoder, item_encoder, user_encoder.transform(dataset.users), item_encoder.transform(dataset.items), known
    )
