"""AttentionRec: the query item attends over the user's support items and their ratings.

The support set shapes a prediction directly (a new user's ratings of similar items weigh most) as well
as through gradient adaptation. When the support items themselves are scored (the inner-loop loss), each
item is kept from attending to itself, so it cannot copy its own rating.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metarec.models.base import Context, RatingModel
from metarec.models.embedding import mlp


class AttentionRec(RatingModel):
    """rating = center + MLP([e(user); e(item); sum_j a_j W_v [e(s_j); r_j]]), a = softmax(q k / sqrt(h))."""

    uses_context = True

    def __init__(self, *args, attention_size: int = 32, hidden: tuple[int, ...] = (64, 64), dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        h = attention_size
        self.attention_size = h
        self.head = nn.ModuleDict({
            "query": nn.Linear(self.item_dim, h),
            "key": nn.Linear(self.item_dim, h),
            "value": nn.Linear(self.item_dim + 1, h),
            "mlp": mlp([self.user_dim + self.item_dim + h, *hidden, 1], dropout),
        })

    def score(self, user_vec: torch.Tensor, item_vec: torch.Tensor, context: Context | None = None,
              exclude_self: bool = False) -> torch.Tensor:
        n = item_vec.shape[-2]
        if context is None or context.item_vec.shape[-2] == 0:
            summary = item_vec.new_zeros(*item_vec.shape[:-1], self.attention_size)
        else:
            centered = (context.rating - self.rating_center).unsqueeze(-1)
            q = self.head["query"](item_vec)  # [N, h]
            k = self.head["key"](context.item_vec)  # [S, h]
            v = self.head["value"](torch.cat([context.item_vec, centered], dim=-1))  # [S, h]
            logits = q @ k.transpose(-1, -2) / math.sqrt(self.attention_size)  # [N, S]
            valid = context.mask.unsqueeze(-2).expand_as(logits) > 0
            if exclude_self:
                eye = torch.eye(n, logits.shape[-1], dtype=torch.bool, device=logits.device)
                valid = valid & ~eye
            weights = torch.softmax(logits.masked_fill(~valid, -1e9), dim=-1) * valid
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-9)
            summary = weights @ v
        user = user_vec.unsqueeze(-2).expand(*item_vec.shape[:-1], user_vec.shape[-1])
        x = torch.cat([user, item_vec, summary], dim=-1)
        return self.head["mlp"](x).squeeze(-1) + self.rating_center
