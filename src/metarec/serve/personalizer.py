"""A meta-trained model bound to its vocabularies: adapt to one new user's ratings (or several users' at
once), then predict and recommend. :class:`~metarec.serve.recommender.ColdStartRecommender` wraps it.

External ids in, external ids out. Unknown item ids in a user's ratings are reported, not fatal, unless
no rated item is known at all; an empty support set still gives the meta-learned initialisation's
(non-personalised) predictions when allowed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from metarec.data.encoding import UNKNOWN, FeatureTable
from metarec.errors import DataError, UnknownIdError
from metarec.meta.checkpoint import Checkpoint
from metarec.models.base import Params
from metarec.models.new_item_order import NewItemOrder, trained_order
from metarec.serve.checks import confidence_in_scale, rating_in_scale, support_pairs
from metarec.serve.topk import ApproximateTopK, ExactTopK, Ranked
from metarec.tasks.taskset import TaskBatch

log = logging.getLogger(__name__)


@dataclass
class AdaptedUser:
    """One user's personalised parameters and what they rated; for an ensemble, ``members``: the same user
    adapted by the other members (every score is then the members' mean)."""

    personalizer: "Personalizer"
    params: Params
    task: dict
    rated_idx: np.ndarray
    unknown_item_ids: list[str]
    members: list["AdaptedUser"] = field(default_factory=list)

    def predict(self, item_ids: Sequence[object]) -> np.ndarray:
        """Predicted ratings of ``item_ids`` (unknown ids raise :class:`UnknownIdError`)."""
        idx = self.personalizer.item_vocab.indices(list(item_ids))
        return self.predict_idx(idx)

    def predict_idx(self, idx: np.ndarray) -> np.ndarray:
        p = self.personalizer
        idx = np.asarray(idx)
        if len(idx) == len(p.item_vocab) and p.catalogue_vec is not None and np.array_equal(idx, p.all_idx):
            return self.catalogue_score_tensor()[0].cpu().numpy()  # the whole catalogue: no gathers
        own = self._own_prediction(idx)
        return np.mean([own, *(m._own_prediction(idx) for m in self.members)], axis=0) if self.members else own

    def _own_prediction(self, idx: np.ndarray) -> np.ndarray:
        p = self.personalizer
        vec = proj = None
        items = torch.as_tensor(idx, dtype=torch.long, device=p.device)
        if p.catalogue_vec is not None:
            vec = p.catalogue_vec.index_select(0, items)
            proj = None if p.catalogue_proj is None else p.catalogue_proj.index_select(0, items)
        pred = p.learner.predict_items(self.params, self.task, items, vec, proj, p.catalogue_gram)
        return pred[0].cpu().numpy()

    def catalogue_score_tensor(self) -> torch.Tensor:
        """Scores [1, N] of every catalogue item (for :mod:`metarec.serve.topk`), new items in their order."""
        return self.personalizer.catalogue_score_tensor(self.params, self.task, [self.rated_idx], self.members)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w [1, F], c [1])`` of a model linear in the item vector (for the approximate top-k); an
        ensemble's: its members' side by side (``c`` [1, M], :class:`~metarec.serve.topk.MemberMeanCatalogue`)."""
        return _member_weights(self, self.members)

    def new_item_order(self) -> tuple[NewItemOrder, np.ndarray, np.ndarray] | None:
        """The personalizer's new-item order with this user's support (for the approximate top-k)."""
        return self.personalizer.support_order([self.rated_idx])

    def recommend(self, k: int = 10, exclude_rated: bool = True, candidates: Sequence[object] | None = None) -> list[tuple[str, float]]:
        """The ``k`` best-scored items (of the catalogue, by the personalizer's top-k, or of ``candidates``),
        best first."""
        p = self.personalizer
        if candidates is None:
            excluded = self.rated_idx if exclude_rated else None
            return p.ranked_ids(p.ranker.search(self, [int(k)], [excluded])[0])
        pool = p.item_vocab.indices(list(candidates))
        scores = self.predict_idx(pool)
        if exclude_rated and len(self.rated_idx):
            keep = ~np.isin(pool, self.rated_idx)
            pool, scores = pool[keep], scores[keep]
        return p.top_k(pool, scores, k)


@dataclass
class AdaptedUsers:
    """Several new users adapted together (one padded batch): scored against the catalogue at once."""

    personalizer: "Personalizer"
    params: Params
    task: dict
    rated_idx: list[np.ndarray]
    unknown_item_ids: list[list[str]]
    members: list["AdaptedUsers"] = field(default_factory=list)  # an ensemble's other members (see AdaptedUser)

    def __len__(self) -> int:
        return len(self.rated_idx)

    def catalogue_scores(self) -> np.ndarray:
        """Predicted ratings [B, N] of every catalogue item, one row per user."""
        return self.catalogue_score_tensor().cpu().numpy()

    def catalogue_score_tensor(self) -> torch.Tensor:
        return self.personalizer.catalogue_score_tensor(self.params, self.task, self.rated_idx, self.members)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _member_weights(self, self.members)

    def new_item_order(self) -> tuple[NewItemOrder, np.ndarray, np.ndarray] | None:
        return self.personalizer.support_order(self.rated_idx)

    def recommend(self, k: int | Sequence[int] = 10, exclude_rated: bool | Sequence[bool] = True) -> list[list[tuple[str, float]]]:
        """Per user, :meth:`AdaptedUser.recommend` of the whole catalogue (``k`` and ``exclude_rated``
        may differ per user)."""
        n = len(self)
        ks = [k] * n if isinstance(k, (int, np.integer)) else list(k)
        excludes = [exclude_rated] * n if isinstance(exclude_rated, (bool, np.bool_)) else list(exclude_rated)
        p = self.personalizer
        excluded = [rated if exclude else None for rated, exclude in zip(self.rated_idx, excludes)]
        return [p.ranked_ids(top) for top in p.ranker.search(self, [int(k_) for k_ in ks], excluded)]


def _member_mean(scores: list[torch.Tensor]) -> torch.Tensor:
    """An ensemble's score: its members' mean (one model: its own)."""
    return scores[0] if len(scores) == 1 else torch.stack(scores).mean(0)


def _member_weights(user: "AdaptedUser | AdaptedUsers", members: list) -> tuple[torch.Tensor, torch.Tensor]:
    """One model's ``(w [B, F], c [B])``; an ensemble's: ``(w [B, F_1 + ... + F_M], c [B, M])``."""
    own = [u.personalizer.learner.user_weights(u.params, u.task) for u in (user, *members)]
    if not members:
        return own[0]
    return torch.cat([w for w, _ in own], dim=1), torch.stack([c for _, c in own], dim=1)


class Personalizer:
    """A loaded checkpoint bound to its vocabularies and encoders; with ``members``, an ensemble's first
    member and personalizers of the others (:mod:`metarec.meta.ensemble`): every user is adapted by each
    and scored by their mean."""

    def __init__(self, checkpoint: Checkpoint, ranker: "ExactTopK | ApproximateTopK | None" = None,
                 like: "Personalizer | None" = None, members: Sequence["Personalizer"] = ()) -> None:
        """``ranker``: the catalogue top-k (:mod:`metarec.serve.topk`; default exact), shared by replicas.
        ``like``: a personalizer of the same checkpoint whose read-only catalogue structures (the new items'
        attribute vectors) this one shares instead of building its own."""
        self.members = list(members)
        self.checkpoint = checkpoint
        self.learner = checkpoint.learner
        self.item_vocab = checkpoint.item_vocab
        self.user_vocab = checkpoint.user_vocab
        self.features = checkpoint.features
        self.device = next(self.learner.model.parameters()).device
        # implicit feedback: a support row is a positive (its rating a confidence), scores rank, not rate
        self.implicit = bool(checkpoint.model_config.implicit)
        self.learner.model.eval()
        self.all_idx = np.arange(len(self.item_vocab))
        self.all_items = torch.arange(len(self.item_vocab), device=self.device)
        # Under the meta-parameters, catalogue item vectors (and what the head can precompute from them)
        # are the same for every user: computed once here.
        self.catalogue_vec = self.learner.catalogue_vectors(self.all_items)
        self.catalogue_proj = self.learner.catalogue_projection(self.catalogue_vec)
        self.catalogue_gram = self.learner.catalogue_gram(self.catalogue_vec)  # [N, N] (N <= 6000), else None
        self.learner.freeze_catalogue(self.catalogue_vec)  # an implicit fold-in's catalogue statistics, once
        # a request's support items are looked up here, not embedded again (the same vectors)
        self._item_table = None if self.catalogue_vec is None else (self.catalogue_vec, self.catalogue_proj)
        self.new_item_order = like.new_item_order if like is not None else self._new_item_order()
        self._user_lookups = self._user_encoding_lookups()
        self.ranker = ranker or ExactTopK()

    def _new_item_order(self) -> NewItemOrder | None:
        """The implicit meta-learner's order of new items by attribute similarity
        (:mod:`metarec.models.new_item_order`), with the weight chosen on validation users when it was
        trained (checkpoint state ``new_item_order``); None when that weight is 0 or absent. It applies to
        whole-catalogue rankings (exact or approximate top-k); scores of chosen items do not use it."""
        if not self.implicit:
            return None
        f = self.features
        return trained_order(self.checkpoint.state, f.item_features, f.item_encoder, f.known_items.cpu().numpy())

    def catalogue_score_tensor(self, params: Params, task: dict, rated: Sequence[np.ndarray],
                               members: Sequence["AdaptedUser | AdaptedUsers"] = ()) -> torch.Tensor:
        """Scores [B, N] of every catalogue item for adapted users (``rated``: each one's support items), each
        user's new items in their order (:meth:`_new_item_order`). ``members``: the same users adapted by an
        ensemble's other members; the model scores are then their mean, and the new items' order (the
        ensemble's, kept in the first member's checkpoint) applies once, to that mean."""
        scores = _member_mean([self.model_scores(params, task),
                               *(m.personalizer.model_scores(m.params, m.task) for m in members)])
        ordering = self.support_order(rated)
        if ordering is None:
            return scores
        order, ptr, items = ordering
        out = order.apply(scores.detach().cpu().numpy(), ptr, items)
        return torch.as_tensor(out, dtype=scores.dtype, device=scores.device)

    def support_order(self, rated: Sequence[np.ndarray]) -> tuple[NewItemOrder, np.ndarray, np.ndarray] | None:
        """(the new-item order, the users' support items as CSR ptr / items), None without an order."""
        if self.new_item_order is None:
            return None
        ptr = np.concatenate([[0], np.cumsum([len(r) for r in rated])]).astype(np.int64)
        items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rated]) if len(rated) else np.zeros(0, np.int64)
        return self.new_item_order, ptr, items

    def model_scores(self, params: Params, task: dict) -> torch.Tensor:
        """The model's own scores [B, N] of every catalogue item for adapted users (no new-item order)."""
        return self.learner.predict_items(params, task, self.all_items, self.catalogue_vec, self.catalogue_proj,
                                          self.catalogue_gram)

    def _encode_user(self, attributes: Mapping[str, object] | None) -> FeatureTable:
        """The encoded attribute table of one new user: ``transform_record``'s result, computed without
        pandas (~0.5 ms) for plain scalar values of categorical and numeric attributes."""
        if self._user_lookups is None:
            return self.features.user_encoder.transform_record(attributes).to(self.device)
        record = attributes or {}
        single = {}
        for column, lookup in self._user_lookups:
            value = record.get(column.name)
            if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
                code = UNKNOWN
            elif column.kind == "categorical" and isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
                code = lookup.get(str(value), UNKNOWN)
            elif column.kind == "numeric" and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
                v = float(value)
                code = int(np.searchsorted(lookup, v, side="right")) + 1 if np.isfinite(v) else UNKNOWN
            else:  # anything else (strings to parse as numbers, ...): the encoder's own path
                return self.features.user_encoder.transform_record(attributes).to(self.device)
            single[column.name] = torch.tensor([code], dtype=torch.long, device=self.device)
        return FeatureTable(single, {}, 1)

    def _user_encoding_lookups(self):
        """Per user column, the value -> index map (categorical) or bucket edges (numeric); None when a
        column is multi-valued (then the encoder's own path is used)."""
        out = []
        for column in self.features.user_encoder.columns:
            if column.kind == "categorical":
                out.append((column, {v: i + 1 for i, v in enumerate(column.values)}))
            elif column.kind == "numeric":
                out.append((column, np.asarray(column.edges, dtype=np.float64)))
            else:
                return None
        return out

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "Personalizer":
        from metarec.meta.trainer import load_best

        return cls(load_best(run_dir, device=device))

    def top_k(self, pool: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` best of ``pool`` by score, best first; ties by catalogue order (reproducible)."""
        k = min(k, len(pool))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.lexsort((pool[top], -scores[top]))]
        ids = self.item_vocab.ids
        return [(ids[int(pool[i])], float(scores[i])) for i in top]

    def ranked_ids(self, ranked: Ranked) -> list[tuple[str, float]]:
        """A top-k's (indices, scores) as (item id, score) pairs."""
        ids = self.item_vocab.ids
        return [(ids[int(i)], float(s)) for i, s in zip(*ranked)]

    def support(self, ratings: Mapping[object, float] | Sequence[object], *, allow_empty: bool = False
                ) -> tuple[list[int], list[float], list[str]]:
        """A new user's ratings checked and mapped to catalogue indices: (indices, ratings, unknown ids).

        The one check of a rating's range: :class:`DataError` (field ``ratings.<position>.rating``) for a
        rating that is not a finite number in the rating scale; :class:`UnknownIdError` when no rated
        item is known (unless ``allow_empty``). An implicit-feedback model takes item ids (positives of
        confidence 1) or ``{item_id: confidence}`` (:func:`~metarec.serve.checks.support_pairs`).
        """
        known_idx, known_r, unknown = [], [], []
        for position, (item_id, value) in enumerate(support_pairs(ratings, self.implicit)):
            if self.implicit:
                r = confidence_in_scale(value, self.checkpoint.rating_scale[1], f"confidence.{position}",
                                        of=f" of item {item_id!r}")
            else:
                r = rating_in_scale(value, self.checkpoint.rating_scale, f"ratings.{position}.rating",
                                    of=f" of item {item_id!r}")
            idx = self.item_vocab.get(item_id)
            if idx < 0:
                unknown.append(str(item_id))
            else:
                known_idx.append(idx)
                known_r.append(r)
        if not known_idx and not allow_empty:
            if unknown:
                raise UnknownIdError(f"none of the {'given' if self.implicit else 'rated'} items is known: {unknown[:5]}")
            raise DataError("the support set is empty: " + ("give at least one item" if self.implicit else
                                                            "rate at least one item"),
                            field="items" if self.implicit else "ratings")
        if unknown:
            log.info("ignoring %d unknown item ids: %s", len(unknown), unknown[:5])
        return known_idx, known_r, unknown

    def encode_user(self, attributes: Mapping[str, object] | None) -> FeatureTable:
        """One new user's encoded attributes (a one-row table), for :meth:`adapt_encoded`."""
        return self._encode_user(attributes)

    def adapt(
        self,
        ratings: Mapping[object, float],
        user_attributes: Mapping[str, object] | None = None,
        *,
        steps: int | None = None,
        allow_empty: bool = False,
    ) -> AdaptedUser:
        """Personalised parameters from ``{item_id: rating}`` (a few gradient steps on them)."""
        known_idx, known_r, unknown = self.support(ratings, allow_empty=allow_empty)
        rated = np.asarray(known_idx, dtype=np.int64)
        items = torch.from_numpy(rated.copy()).to(self.device).view(1, len(rated))
        rating = torch.from_numpy(np.asarray(known_r, dtype=np.float32)).to(self.device).view(1, len(rated))
        mask = torch.ones_like(rating)
        batch = TaskBatch(torch.zeros(1, dtype=torch.long, device=self.device), items, rating, mask,
                          items[:, :0], rating[:, :0], mask[:, :0])
        users = self._encode_user(user_attributes)
        steps = steps if known_idx else 0
        return AdaptedUser(self, *self._adapted(batch, users, steps), rated, unknown,
                           [AdaptedUser(m, *m._adapted(batch, users, steps), rated, unknown) for m in self.members])

    def _adapted(self, batch: TaskBatch, users: FeatureTable, steps: int | None) -> tuple[Params, dict]:
        """This model's parameters adapted to ``batch``'s supports (a member's: the first's encodings serve it,
        the members share the split's encoders)."""
        return self.learner.adapt(batch, steps=steps, users=users, item_table=self._item_table)

    def adapt_many(
        self,
        users: Sequence[tuple[Mapping[object, float], Mapping[str, object] | None]],
        *,
        steps: int | None = None,
    ) -> AdaptedUsers:
        """:meth:`adapt` of several new users ``[(ratings, attributes), ...]`` as one padded batch.

        Many users per call amortise the per-call overhead (the same maths, padded support rows carry
        no weight). The first invalid user raises; a caller that must isolate users checks each with
        :meth:`support` and :meth:`encode_user` and calls :meth:`adapt_encoded`.
        """
        prepared = [(*self.support(ratings), self._encode_user(attributes)) for ratings, attributes in users]
        return self.adapt_encoded(prepared, steps=steps)

    def adapt_encoded(
        self,
        users: Sequence[tuple[Sequence[int], Sequence[float], list[str], FeatureTable]],
        *,
        steps: int | None = None,
    ) -> AdaptedUsers:
        """Adapt users already checked: ``(indices, ratings, unknown ids, encoded attributes)`` each,
        as :meth:`support` and :meth:`encode_user` return them; every user needs a known rating."""
        if not users:
            raise DataError("adapt_encoded needs at least one user", field="ratings")
        n, width = len(users), max(len(u[0]) for u in users)
        if width == 0:
            raise DataError("the support set is empty: rate at least one item", field="ratings")
        items = np.zeros((n, width), dtype=np.int64)
        rating = np.zeros((n, width), dtype=np.float32)
        mask = np.zeros((n, width), dtype=np.float32)
        for row, (idx, values, _, _) in enumerate(users):
            if not len(idx):
                raise DataError("the support set is empty: rate at least one item", field="ratings")
            items[row, : len(idx)] = idx
            rating[row, : len(idx)] = values
            mask[row, : len(idx)] = 1.0
        tables = [u[3] for u in users]
        encoded = FeatureTable({c: torch.cat([t.single[c] for t in tables]) for c in tables[0].single},
                               {c: torch.cat([t.multi[c] for t in tables]) for c in tables[0].multi}, n)
        item_t = torch.from_numpy(items).to(self.device)
        rating_t = torch.from_numpy(rating).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        batch = TaskBatch(torch.arange(n, device=self.device), item_t, rating_t, mask_t,
                          item_t[:, :0], rating_t[:, :0], mask_t[:, :0])
        rated = [np.asarray(u[0], dtype=np.int64) for u in users]
        unknown = [list(u[2]) for u in users]
        return AdaptedUsers(self, *self._adapted(batch, encoded, steps), rated, unknown,
                            [AdaptedUsers(m, *m._adapted(batch, encoded, steps), rated, unknown) for m in self.members])
