"""Attribute embeddings: one table per column; a multi-valued column is averaged like ``EmbeddingBag``."""

from __future__ import annotations

import re
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metarec.data.encoding import PAD, FeatureEncoder


def _key(column: str) -> str:
    """Module names cannot contain dots; attribute names may."""
    return re.sub(r"[^0-9A-Za-z_]", "_", column)


class _PackedBags(torch.autograd.Function):
    """Every attribute embedding of a set of rows in one weighted gather-sum (:func:`_bag_sum`); the
    backward is :meth:`PackedAttributes.table_gradient` (one ``index_add``, itself differentiable)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, at: "PackedLookup") -> torch.Tensor:
        ctx.at, ctx.table_shape = at, table.shape
        return _bag_sum(table, at)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return PackedAttributes.table_gradient(grad_out, ctx.at, grad_out.new_zeros(ctx.table_shape)), None


def _bag_sum(table: torch.Tensor, at: "PackedLookup") -> torch.Tensor:
    """Output row ``r * C + c`` (slot c of row r) = inv_count[r * C + c] * sum of ``table[flat[t]]`` over t
    with ``owner[t] = r * C + c``: one ``embedding_bag`` (~3x faster than a gather plus an index_add)."""
    return F.embedding_bag(at.flat, table, at.offsets, mode="sum", per_sample_weights=at.inv_count.index_select(0, at.owner))


class PackedAttributes:
    """A catalogue's encoded attributes laid out for :meth:`PackedAttributes.embed`: per row, the
    positions of its non-padding values in the concatenation of the column tables (-1 = none), and per
    slot the number of values and 1 / (that number). Derived data, rebuilt from the buffers."""

    def __init__(self, embedding: "AttributeEmbedding", single: Mapping[str, torch.Tensor], multi: Mapping[str, torch.Tensor]) -> None:
        columns = [*embedding.single_columns, *embedding.multi_columns]
        offsets, start = {}, 0
        for c in columns:
            offsets[c] = start
            start += embedding.table(c).num_embeddings
        parts, counts = [], []
        for c in embedding.single_columns:
            parts.append(single[c].unsqueeze(-1) + offsets[c])
            counts.append(torch.ones_like(single[c], dtype=torch.float64))
        for c in embedding.multi_columns:
            idx = multi[c]
            valid = idx != PAD
            parts.append(torch.where(valid, idx + offsets[c], torch.full_like(idx, -1)))
            counts.append(valid.sum(-1).to(torch.float64))
        index = torch.cat(parts, -1)
        # compact: the real entries of each row first (still in slot order), then the row trimmed to its
        # longest real entry list
        order = torch.argsort((index < 0).to(torch.int8), dim=-1, stable=True)
        index = index.gather(-1, order)
        width = int((index >= 0).sum(-1).max()) if index.numel() else 0
        self.index = index[:, :width].contiguous()
        self.count = torch.stack(counts, -1).to(torch.int64).contiguous()  # [n, C]: real entries per slot
        self.inv_count = (1.0 / torch.stack(counts, -1).clamp(min=1.0)).contiguous()  # [n, C], float64
        self._inv_cast: dict[torch.dtype, torch.Tensor] = {}
        self.one_each = bool((self.count == 1).all()) and self.index.shape[-1] == len(columns)  # single columns only
        self.n_slots = len(columns)

    def lookup(self, rows: torch.Tensor, dtype: torch.dtype) -> PackedLookup:
        """Where ``rows``' attribute values sit in the concatenated tables (:meth:`embed`'s and
        :meth:`table_gradient`'s shared work)."""
        flat_rows = rows.reshape(-1)
        index = self.index.index_select(0, flat_rows).view(-1)
        inv_count = self._inv_cast.get(dtype)
        if inv_count is None:  # 1 / count rounded once to the tables' dtype
            inv_count = self._inv_cast[dtype] = self.inv_count.to(dtype)
        inv_count = inv_count.index_select(0, flat_rows).view(-1)
        if self.one_each:  # every slot holds one value: entries, slots and bags coincide
            owner = torch.arange(index.shape[0], device=index.device)
            return PackedLookup(index, owner, inv_count, owner, tuple(rows.shape))
        # the real entries' positions (boolean indexing would search twice); rows' entries are slot-ordered
        flat = index.index_select(0, (index >= 0).nonzero().squeeze(1))
        count = self.count.index_select(0, flat_rows).view(-1)
        return PackedLookup(flat, torch.repeat_interleave(count, output_size=flat.shape[0]), inv_count,
                            count.cumsum(0) - count, tuple(rows.shape))

    def embed(self, embedding: "AttributeEmbedding", rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), C * dim]: the same vectors as ``embedding(single[rows], multi[rows])``."""
        table = packed_table(embedding)
        at = self.lookup(rows, table.dtype)
        return _PackedBags.apply(table, at).reshape(*at.shape, self.n_slots * embedding.dim)

    @staticmethod
    def embed_rows(table: torch.Tensor, at: PackedLookup) -> torch.Tensor:
        """:meth:`embed` without an autograd graph, from a :meth:`lookup` and the :func:`packed_table`: for
        a caller that writes the backward itself (:meth:`table_gradient`)."""
        return _bag_sum(table, at).reshape(*at.shape, -1)

    @staticmethod
    def table_gradient(adjoint: torch.Tensor, at: PackedLookup, out: torch.Tensor) -> torch.Tensor:
        """The gradient of sum(adjoint * embed(rows)) w.r.t. the :func:`packed_table`, added into ``out``
        (zeros of the table's shape, or a view of a larger gradient buffer): each value's share of its
        slot's mean, summed into its table row - the backward of :meth:`embed`. In place unless grad mode is
        on (then it is itself differentiable: a backward being differentiated)."""
        src = adjoint.reshape(at.inv_count.shape[0], -1)
        src = (src * at.inv_count.unsqueeze(-1)).index_select(0, at.owner)
        return out.index_add(0, at.flat, src) if torch.is_grad_enabled() else out.index_add_(0, at.flat, src)


class PackedLookup(NamedTuple):
    """A :meth:`PackedAttributes.lookup`: per real value (in row, slot order) its row of the concatenated
    tables and its output row (row * C + slot); per output row 1 / count and the start of its values."""

    flat: torch.Tensor
    owner: torch.Tensor
    inv_count: torch.Tensor
    offsets: torch.Tensor
    shape: tuple[int, ...]


def packed_table(embedding: "AttributeEmbedding") -> torch.Tensor:
    """The column tables of ``embedding`` stacked row-wise (single columns, then multi), as PackedAttributes
    indexes them."""
    return torch.cat([t.weight for t in packed_tables(embedding)])


def packed_tables(embedding: "AttributeEmbedding") -> list[nn.Embedding | nn.EmbeddingBag]:
    """The column tables in :func:`packed_table`'s order."""
    return [embedding.table(c) for c in [*embedding.single_columns, *embedding.multi_columns]]


def bag_mean(index: torch.Tensor, weight: torch.Tensor, *, vmap_safe: bool) -> torch.Tensor:
    """Mean of the embeddings of the non-padding indices in the last dimension of ``index``.

    Outside ``vmap`` this is ``F.embedding_bag(mode='mean', padding_idx=0)``. With ``vmap_safe`` the
    same mean is a masked gather: PyTorch has neither a ``vmap`` batching rule nor a double backward
    for ``embedding_bag``, and the inner loop needs both when embeddings adapt. (Many rows at once - a
    meta-batch's items, a catalogue - go through :class:`PackedAttributes` instead.)
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

    def table(self, column: str) -> nn.Embedding | nn.EmbeddingBag:
        return self.single[_key(column)] if column in self.single_columns else self.multi[_key(column)]

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
