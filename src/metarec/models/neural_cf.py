"""NeuralCF: p_u from the user's attributes, q_v from the item's, rating = p_u . q_v + biases (seed §3.3).

The item side (q_v and its bias) is computed in the ``items`` stage, so when only the head adapts it is
computed once per meta-batch; the head is the user tower and the user bias, i.e. exactly what a new
user's ratings should personalise.
"""

from __future__ import annotations

import torch
from torch import nn

from metarec.models.base import Context, RatingModel
from metarec.models.embedding import mlp


class NeuralCF(RatingModel):
    """rating = center + b + b_u + b_v + p_u . q_v with p_u = f(user attrs), q_v = g(item attrs [, item id])."""

    def __init__(self, *args, factors: int = 32, hidden: tuple[int, ...] = (64,), dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.factors = factors
        self.item_tower = mlp([self.item_dim, *hidden, factors + 1], dropout)  # q_v and b_v
        user_in = max(self.user_dim, 1)
        self.head = nn.ModuleDict({
            "user_tower": mlp([user_in, *hidden, factors + 1], dropout),  # p_u and b_u
            "bias": nn.Linear(1, 1, bias=False),
        })
        nn.init.zeros_(self.head["bias"].weight)

    def embed_items(self, item_idx: torch.Tensor, *, vmap_safe: bool = False) -> torch.Tensor:
        return self.item_tower(super().embed_items(item_idx, vmap_safe=vmap_safe))

    def score(self, user_vec: torch.Tensor, item_vec: torch.Tensor, context: Context | None = None,
              exclude_self: bool = False) -> torch.Tensor:
        if user_vec.shape[-1] == 0:  # a dataset without user attributes: the tower starts from a constant
            user_vec = torch.ones(*user_vec.shape[:-1], 1, dtype=item_vec.dtype, device=item_vec.device)
        pu = self.head["user_tower"](user_vec)
        p, b_u = pu[..., : self.factors], pu[..., self.factors]
        q, b_v = item_vec[..., : self.factors], item_vec[..., self.factors]
        dot = (q * p.unsqueeze(-2)).sum(-1)
        return self.rating_center + self.head["bias"].weight[0, 0] + b_u.unsqueeze(-1) + b_v + dot
