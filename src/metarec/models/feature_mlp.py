"""FeatureMLP: embeddings of the user's and the item's attributes, concatenated, an MLP predicts the rating.

This is the seed's worked example and MeLU's architecture (the ``melu`` preset: embedding 32, fc 64-64-1,
only the fc head adapts in the inner loop). With a plain Linear / ReLU head the meta-learner runs its
inner loops with the batched-head kernel (:mod:`metarec.meta.kernels.batched_head`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarec.models.base import Context, RatingModel
from metarec.errors import ConfigError
from metarec.models.embedding import mlp


class FeatureMLP(RatingModel):
    """rating = center + MLP([e(user attributes); e(item attributes)])."""

    def __init__(self, *args, hidden: tuple[int, ...] = (64, 64), dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.item_dim == 0:
            raise ConfigError("feature-mlp has no item input: the items have no attributes; give it item id "
                              "vectors (model.item_id_embedding = true, --item-ids) or use neural-cf (the recipe)")
        self.head = mlp([self.user_dim + self.item_dim, *hidden, 1], dropout)

    def score(self, user_vec: torch.Tensor, item_vec: torch.Tensor, context: Context | None = None,
              exclude_self: bool = False) -> torch.Tensor:
        # First layer on [user; item] = W_u user + W_i item + b: the user half once per user, not per item.
        first = self.head[0]
        du = user_vec.shape[-1]
        hidden = F.linear(item_vec, first.weight[:, du:]) + F.linear(user_vec, first.weight[:, :du], first.bias).unsqueeze(-2)
        return self.head[1:](hidden).squeeze(-1) + self.rating_center

    def head_is_plain(self) -> bool:
        """True when the head is Linear / ReLU only (no dropout noise): the batched head is then exact."""
        return all(isinstance(m, (nn.Linear, nn.ReLU)) or (isinstance(m, nn.Dropout) and m.p == 0) for m in self.head)

    def linear_names(self) -> list[tuple[str, str]]:
        """(weight, bias) parameter names of the head's linear layers, input to output."""
        return [(f"head.{i}.weight", f"head.{i}.bias") for i, m in enumerate(self.head) if isinstance(m, nn.Linear)]
