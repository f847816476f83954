"""FeatureMLP: embeddings of the user's and the item's attributes, concatenated, an MLP predicts the rating.

This is the seed's worked example and MeLU's architecture (the ``melu`` preset: embedding 32, fc 64-64-1,
only the fc head adapts in the inner loop).
"""

from __future__ import annotations

import torch

from metarec.models.base import Context, RatingModel
from metarec.models.embedding import mlp


class FeatureMLP(RatingModel):
    """rating = center + MLP([e(user attributes); e(item attributes)])."""

    def __init__(self, *args, hidden: tuple[int, ...] = (64, 64), dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head = mlp([self.user_dim + self.item_dim, *hidden, 1], dropout)

    def score(self, user_vec: torch.Tensor, item_vec: torch.Tensor, context: Context | None = None,
              exclude_self: bool = False) -> torch.Tensor:
        user = user_vec.unsqueeze(-2).expand(*item_vec.shape[:-1], user_vec.shape[-1])
        return self.head(torch.cat([user, item_vec], dim=-1)).squeeze(-1) + self.rating_center
