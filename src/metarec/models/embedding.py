"""Attribute embeddings: one table per column; a multi-valued column is averaged like ``EmbeddingBag``."""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from metarec.data.encoding import PAD, FeatureEncoder


def _key(column: str) -> str:
    """Module names cannot contain dots; attribute names may."""
    return re.sub(r"[^0-9A-Za-z_]", "_", column)


def bag_mean(index: torch.Tensor, weight: torch.Tensor, *, vmap_safe: bool) -> torch.Tensor:
    """Mean of the embeddings of the non-padding indices in the last dimension of ``index``.

    Outside ``vmap`` this is ``F.embedding_bag(mode='mean', padding_idx=0)``. With ``vmap_safe`` the
    same mean is a masked gather: PyTorch has neither a ``vmap`` batching rule nor a double backward
    for ``embedding_bag``, and the inner loop needs both when embeddings adapt.
    """
    if not vmap_safe and index.dim() >= 1:
        flat = index.reshape(-1, index.shape[-1])
        out = F.embedding_bag(flat, weight, mode="mean", padding_idx=PAD)
        return out.reshape(*index.shape[:-1], weight.shape[-1])
    vectors = F.embedding(index, weight)  # [..., L, d]
    mask = (index != PAD).to(vectors.dtype).unsqueeze(-1)
    return (vectors * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)


class AttributeEmbedding(nn.Module):
    """Concatenated embeddings of every encoded attribute of one side (users or items)."""

    def __init__(self, encoder: FeatureEncoder, dim: int) -> None:
        super().__init__()
        self.columns = [c.name for c in encoder.columns]
        self.single_columns = encoder.single_columns
        self.multi_columns = encoder.multi_columns
        cards = encoder.cardinalities
        self.single = nn.ModuleDict({_key(c): nn.Embedding(cards[c], dim) for c in self.single_columns})
        self.multi = nn.ModuleDict(
            {_key(c): nn.EmbeddingBag(cards[c], dim, mode="mean", padding_idx=PAD) for c in self.multi_columns}
        )
        for table in [*self.single.values(), *self.multi.values()]:
            nn.init.normal_(table.weight, std=0.1)
        with torch.no_grad():
            for table in self.multi.values():
                table.weight[PAD].zero_()
        self.dim = dim
        self.out_dim = dim * len(self.columns)

    def forward(
        self, single: Mapping[str, torch.Tensor], multi: Mapping[str, torch.Tensor], *, vmap_safe: bool = False
    ) -> torch.Tensor:
        parts = [self.single[_key(c)](single[c]) for c in self.single_columns]
        parts += [bag_mean(multi[c], self.multi[_key(c)].weight, vmap_safe=vmap_safe) for c in self.multi_columns]
        if not parts:
            raise ValueError("no attribute columns to embed")
        return torch.cat(parts, dim=-1)


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
