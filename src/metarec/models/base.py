"""The functional interface every rating model implements.

A model is an ``nn.Module`` whose parameters are passed in as a dict through
``torch.func.functional_call``; nothing mutates its weights to make fast weights. Prediction is split
in stages so that the meta-learner can compute what does not adapt once per meta-batch:

* ``users``: user attribute indices -> user vector;
* ``items``: item indices -> item vectors (attributes looked up in the catalogue buffers);
* ``score``: (user vector, item vectors, the task's support context) -> predicted ratings.

Parameters are in two groups: ``embeddings`` (stages ``users`` / ``items``) and ``head`` (``score``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call

from metarec.data.encoding import FeatureEncoder, FeatureTable
from metarec.models.embedding import AttributeEmbedding, PackedAttributes

Params = dict[str, torch.Tensor]
PACKED_MIN_ROWS = 128  # item lookups of fewer rows go column by column (embedding_bag): less fixed cost


@dataclass(frozen=True)
class Context:
    """A task's support set as the model sees it (used by models that attend over it)."""

    item_vec: torch.Tensor  # [S, d]
    rating: torch.Tensor  # [S]
    mask: torch.Tensor  # [S] float
    # [S] float, 1 = a known user's history rating that sets the prior the rest of the support is adapted
    # around, instead of joining it (TaskSet.support_prior); None = every row is plain support. Models
    # that cannot tell the two apart treat history rows as support.
    prior: torch.Tensor | None = None
    # [S, d]: with ``prior``, the support items' vectors as if each were new (``embed_items(as_new=True)``:
    # attributes only), the space a new item is scored in; None = ``item_vec``.
    prior_item_vec: torch.Tensor | None = None
    # implicit feedback: what the model needs of the whole catalogue's item vectors to fold a user in against
    # every item (NeuralCF.catalogue_stats), computed once per batch; None = the model computes it itself
    catalogue: torch.Tensor | None = None


class RatingModel(nn.Module):
    """Base class: attribute embeddings of users and items, optional item-id embeddings, a head."""

    uses_context: bool = False
    head_prefixes: tuple[str, ...] = ("head.",)
    # score(v) = q_v . w_u + b_v + c_u, linear in an item vector [q_v, b_v] (NeuralCF): the model has
    # ``user_weights`` / ``score_with_weights`` (a catalogue scored by one product) and an ``item_offset``
    # (the item-side fold-in, metarec.meta.item_fold_in)
    linear_in_item: bool = False

    def __init__(
        self,
        user_encoder: FeatureEncoder,
        item_encoder: FeatureEncoder,
        item_features: FeatureTable,
        *,
        embedding_size: int,
        item_id_embedding: bool = False,
        item_id_dropout: float = 0.0,
        item_id_size: int | None = None,
        known_items: torch.Tensor | None = None,
        rating_scale: tuple[float, float] = (1.0, 5.0),
        implicit: bool = False,
    ) -> None:
        super().__init__()
        # implicit feedback: the output is a ranking score (unbounded, centred at 0, never clamped), not a rating
        self.implicit = bool(implicit)
        self.user_embedding = AttributeEmbedding(user_encoder, embedding_size) if user_encoder.columns else None
        self.item_embedding = AttributeEmbedding(item_encoder, embedding_size) if item_encoder.columns else None
        n_items = self.n_items = len(item_features)
        for name, tensor in item_features.single.items():
            self.register_buffer(f"item_single__{name}", tensor.clone(), persistent=True)
        for name, tensor in item_features.multi.items():
            self.register_buffer(f"item_multi__{name}", tensor.clone(), persistent=True)
        self._item_single_cols = list(item_features.single)
        self._item_multi_cols = list(item_features.multi)
        # An item id vector is either an input of the item tower (``item_id_size=None``: embedding_size wide,
        # concatenated to the attributes) or, for a model that says so, added to the tower's output.
        self.item_id_in_output = item_id_size is not None
        width = embedding_size if item_id_size is None else item_id_size
        self.item_id = nn.Embedding(n_items, width) if item_id_embedding else None
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=0.01)
            known = torch.ones(n_items) if known_items is None else known_items.float()
            # New items have no trained id vector: their id embedding is masked to zero (content only).
            self.register_buffer("item_known", known.clone(), persistent=True)
        # DropoutNet-style: in training, a warm item's id vector is dropped with this probability, so the
        # attribute pathway alone must predict well - which is all a new item has.
        self.item_id_dropout = float(item_id_dropout)
        self.user_dim = self.user_embedding.out_dim if self.user_embedding is not None else 0
        self.item_dim = (self.item_embedding.out_dim if self.item_embedding is not None else 0) + (
            embedding_size if item_id_embedding and not self.item_id_in_output else 0
        )
        self.rating_scale = rating_scale
        center = 0.0 if self.implicit else sum(rating_scale) / 2.0
        self.register_buffer("rating_center", torch.tensor(center), persistent=True)

    # ------------------------------------------------------------------ stages
    def forward(self, stage: str, *args, **kwargs):  # noqa: D401 - dispatcher for functional_call
        if stage == "users":
            return self.embed_users(*args, **kwargs)
        if stage == "items":
            return self.embed_items(*args, **kwargs)
        if stage == "score":
            return self.score(*args, **kwargs)
        raise ValueError(f"unknown stage {stage!r}")

    def embed_users(self, single: Mapping[str, torch.Tensor], multi: Mapping[str, torch.Tensor], *, vmap_safe: bool = False) -> torch.Tensor:
        if self.user_embedding is None:
            first = next(iter(single.values()), None)
            shape = () if first is None else tuple(first.shape)
            return torch.zeros(*shape, 0, dtype=self.rating_center.dtype, device=self.rating_center.device)
        return self.user_embedding(single, multi, vmap_safe=vmap_safe)

    def _packed_items(self) -> PackedAttributes:
        """The catalogue's attributes packed for one-gather embedding (cached; rebuilt if a buffer changes)."""
        single = {c: getattr(self, f"item_single__{c}") for c in self._item_single_cols}
        multi = {c: getattr(self, f"item_multi__{c}") for c in self._item_multi_cols}
        return self._packed("_packed_cache", self.item_embedding, single, multi)

    def packed_users(self, users: FeatureTable) -> PackedAttributes:
        """``users``' attributes packed for one-gather embedding (cached for the last table seen; rebuilt if a
        tensor of it changes): the one-step kernel's user lookups."""
        return self._packed("_packed_users_cache", self.user_embedding, users.single, users.multi)

    def _packed(self, slot: str, embedding: AttributeEmbedding, single: Mapping[str, torch.Tensor],
                multi: Mapping[str, torch.Tensor]) -> PackedAttributes:
        """The PackedAttributes of these tensors, cached in ``slot`` and rebuilt when one of them changes."""
        key = tuple((t.data_ptr(), t._version, t.device, tuple(t.shape)) for t in [*single.values(), *multi.values()])
        cached = self.__dict__.get(slot)
        if cached is None or cached[0] != key:
            cached = (key, PackedAttributes(embedding, single, multi))
            self.__dict__[slot] = cached
        return cached[1]

    def embed_items(self, item_idx: torch.Tensor, *, vmap_safe: bool = False, as_new: bool = False) -> torch.Tensor:
        """Item vectors; ``as_new``: as if every item were new to training (no id vector), the vector a
        new item gets from its attributes."""
        parts = []
        if self.item_embedding is not None:
            parts.append(self.item_attribute_vectors(item_idx, vmap_safe=vmap_safe))
        if self.item_id is not None and not self.item_id_in_output:
            parts.append(self.item_id_vectors(item_idx, as_new=as_new))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def item_attribute_vectors(self, item_idx: torch.Tensor, *, vmap_safe: bool = False) -> torch.Tensor:
        """The concatenated attribute embeddings of ``item_idx``."""
        if not vmap_safe and item_idx.numel() >= PACKED_MIN_ROWS:
            # many rows (a meta-batch's items, a catalogue): every attribute in one gather
            return self._packed_items().embed(self.item_embedding, item_idx)
        single = {c: getattr(self, f"item_single__{c}")[item_idx] for c in self._item_single_cols}
        multi = {c: getattr(self, f"item_multi__{c}")[item_idx] for c in self._item_multi_cols}
        return self.item_embedding(single, multi, vmap_safe=vmap_safe)

    def item_id_vectors(self, item_idx: torch.Tensor, *, as_new: bool = False) -> torch.Tensor:
        """Id vectors of ``item_idx``: zero for items training never saw (``as_new``: for every item), and
        in training, dropped with probability ``item_id_dropout``."""
        known = self.item_known[item_idx]
        if as_new:
            known = torch.zeros_like(known)
        if self.training and self.item_id_dropout > 0:
            known = known * (torch.rand(known.shape, device=known.device) >= self.item_id_dropout).to(known.dtype)
        return self.item_id(item_idx) * known.unsqueeze(-1)

    def score(self, user_vec: torch.Tensor, item_vec: torch.Tensor, context: Context | None = None,
              exclude_self: bool = False) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ parameter groups
    def param_group(self, name: str) -> bool:
        """True when parameter ``name`` belongs to the head (adapted in MeLU / ANIL style)."""
        return name.startswith(self.head_prefixes)

    def parameter_groups(self) -> dict[str, list[str]]:
        names = [n for n, _ in self.named_parameters()]
        return {"head": [n for n in names if self.param_group(n)], "embeddings": [n for n in names if not self.param_group(n)]}

    def params(self) -> Params:
        return {n: p for n, p in self.named_parameters()}

    # ------------------------------------------------------------------ convenience (not on the hot path)
    def predict(self, params: Params, user_single, user_multi, item_idx: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        """Full prediction for one user's items with the given parameters."""
        u = functional_call(self, params, ("users", user_single, user_multi))
        v = functional_call(self, params, ("items", item_idx))
        return functional_call(self, params, ("score", u, v, context))
