"""The item side of :class:`~metarec.serve.recommender.ColdStartRecommender`: item vectors, similar items,
new items added while serving, and ratings of new items folded into their vectors.

A base class of the facade (its own file to keep each short): the methods read the facade's state and
check their arguments with :mod:`metarec.serve.checks`, as every other method of the facade does.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from metarec.data.vocab import Vocabulary
from metarec.errors import DataError, MetarecError, UnknownIdError
from metarec.meta.item_fold_in import attribute_vectors, supports_item_fold_in
from metarec.serve.bundle import Bundle
from metarec.serve.checks import attribute_record, check_count, rating_in_scale
from metarec.serve.item_ratings import ItemRatings, Rater, fold_in_penalty
from metarec.serve.item_vectors import CosineIndex, factor_vectors, vectors_frame
from metarec.serve.new_items import grown_counts, items_version, with_new_item, with_new_metadata

if TYPE_CHECKING:
    from metarec.data.encoding import ColumnEncoding
    from metarec.serve.personalizer import Personalizer
    from metarec.serve.replicas import ReplicaPool

    from metarec.meta.checkpoint import Checkpoint

MAX_ID_LENGTH = 256


class ItemMethods:
    """Item vectors, similar items and :meth:`add_item` (state: the facade's, see ``_bind``)."""

    _pool: "ReplicaPool[Personalizer]"
    _bundle: Bundle
    _items: pd.DataFrame
    _meta: list[dict[str, Any]]
    _model_version: str
    _item_encodings: "dict[str, ColumnEncoding]"
    _write_lock: threading.Lock
    _batch_lock: threading.Lock
    _batch_personalizer: "Personalizer | None"
    _batch_factory: "Any"
    _added: list[str]  # ids added while serving, in order
    _similarity: "tuple[Any, Vocabulary, CosineIndex, np.ndarray, np.ndarray] | None"

    def _require_fitted(self) -> Any:  # the facade's
        raise NotImplementedError

    def _bind(self, bundle: Bundle) -> None:  # the facade's
        raise NotImplementedError

    def item(self, item_id: object) -> dict[str, Any]:  # the facade's
        raise NotImplementedError

    def _user_record(self, attributes: Mapping[str, object] | None) -> dict[str, object] | None:  # the facade's
        raise NotImplementedError

    def _vectors(self) -> tuple[Vocabulary, CosineIndex, np.ndarray, np.ndarray]:
        """(vocabulary, cosine index, q, bias) of the catalogue now served, computed once per catalogue."""
        self._require_fitted()
        pool, cached = self._pool, self._similarity
        if cached is None or cached[0] is not pool:
            with pool.borrow() as personalizer:
                q, bias = factor_vectors(personalizer.catalogue_vec, personalizer.learner.model)
                cached = (pool, personalizer.item_vocab, CosineIndex(q), q, bias)
            self._similarity = cached
        return cached[1], cached[2], cached[3], cached[4]

    def item_vectors(self) -> pd.DataFrame:
        """Every item's vector from the model's item tower: ``item_id``, ``bias`` and ``vector`` (float32), for
        an ANN index or a downstream model (an ensemble: its first member's). :class:`MetarecError` for a
        model without item vectors (:mod:`metarec.serve.item_vectors` says which have them)."""
        vocab, _, q, bias = self._vectors()
        return vectors_frame(vocab.ids, q, bias)

    def similar_items(self, item_id: object, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` items closest to ``item_id`` by cosine similarity of their vectors (``score``; an ensemble:
        its first member's), best first, with their metadata; :class:`UnknownIdError` for an id outside the catalogue."""
        check_count(k, "k")
        vocab, index, _, _ = self._vectors()
        nearest = index.nearest(vocab.index(item_id), int(k))
        return [{"item_id": vocab.ids[i], "score": score, **self._meta[i]} for i, score in nearest]

    def add_item(self, item_id: object, attributes: Mapping[str, object] | None = None) -> dict[str, Any]:
        """Add a new item to the catalogue; it is scored from its attributes, as every item training never saw
        is (:mod:`metarec.serve.new_items`), and recommendable at once. ``attributes``: the attributes the
        model reads and the catalogue's other metadata (title, ...), checked by name and kind. The model
        lives in memory until :meth:`save`; ``model_version`` changes. Returns the item as :meth:`item` does."""
        self._require_fitted()
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        if not isinstance(item_id, str) or not item_id or len(item_id) > MAX_ID_LENGTH:
            raise DataError(f"item_id must be a text of 1 to {MAX_ID_LENGTH} characters, got {item_id!r}",
                            field="item_id")
        metadata = attribute_record(attributes or {}, self._item_encodings, "item",
                                    others=[str(c) for c in self._items.columns]) or {}
        with self._write_lock:
            bundle = self._bundle
            if item_id in bundle.checkpoint.item_vocab:
                raise DataError(f"item {item_id!r} is already in the catalogue", field="item_id")
            record = {k: v for k, v in metadata.items() if k in self._item_encodings}
            checkpoint = with_new_item(bundle.checkpoint, item_id, record)
            members = tuple(with_new_item(m, item_id, record) for m in bundle.members)  # every member scores it
            added = [*self._added, item_id]
            version = items_version(self._model_version.split("+")[0], added)
            self._bind(Bundle(checkpoint, with_new_metadata(bundle.items, item_id, metadata),
                              grown_counts(bundle.train_counts), bundle.panel, bundle.dataset_name, version,
                              bundle.versions, bundle.ratings, members))
            self._added = added
        return self.item(item_id)

    def add_item_ratings(self, item_id: object, raters: Sequence[Rater], *, batch_size: int = 4) -> dict[str, Any]:
        """Fold ratings of an item training never saw into its vector (:mod:`metarec.serve.item_ratings`):
        each rater is adapted to their own ratings of other items, as a new user is, and the item's offset
        is the ridge solution of their ratings of it around its attribute prediction. Calls add up. Only
        for models linear in the item vector (neural-cf; otherwise :class:`MetarecError`). In memory until
        :meth:`save`; ``model_version`` changes. Returns the item as :meth:`item` does, with
        ``n_ratings_folded_in``."""
        checkpoint: Checkpoint = self._require_fitted()
        if checkpoint.model_config.implicit:  # the item fold-in fits ratings; an implicit model has none
            raise MetarecError("this model was trained on implicit feedback: ratings cannot be folded into an item")
        if self._bundle.members:  # each member's vector would need its own fold-in: not done
            raise MetarecError(f"this model is an ensemble of {len(self._bundle.members) + 1} meta-learners: ratings "
                               "cannot be folded into an item (train it with members = 1)")
        if not supports_item_fold_in(checkpoint.learner):
            raise MetarecError(f"this {checkpoint.model_config.kind} model is not linear in an item vector: "
                               "ratings cannot be folded into an item (train the neural-cf preset)")
        item_id = str(item_id)
        idx = checkpoint.item_vocab.get(item_id)
        if idx < 0:
            raise UnknownIdError(f"unknown item {item_id!r}: add it first (POST /v1/items)")
        if bool(checkpoint.features.known_items[idx]):
            raise MetarecError(f"item {item_id!r} was seen in training: its vector is trained, not folded in")
        if not raters:
            raise DataError("rate the item by at least one rater", field="raters")
        with self._write_lock:
            bundle = self._bundle
            ratings = bundle.ratings or ItemRatings(fold_in_penalty(bundle.checkpoint))
            w, c, given = self._rater_weights(item_id, raters, batch_size)
            with self._batch_lock:
                prior = attribute_vectors(self._personalizer_for_batch().learner, np.asarray([idx]))[0]
            ratings = ratings.added(item_id, w, c, prior, given)
            version = items_version(self._model_version.split("+")[0], self._added, ratings.digest())
            self._bind(Bundle(bundle.checkpoint, bundle.items, bundle.train_counts, bundle.panel,
                              bundle.dataset_name, version, bundle.versions, ratings))
        return {**self.item(item_id), "n_ratings_folded_in": ratings.count(item_id)}

    def _rater_weights(self, item_id: str, raters: Sequence[Rater], batch_size: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every rater checked (fields ``raters.<i>...``), adapted in vectorised groups: ``(w [n, F], c [n],
        their ratings of the item [n])``, float64."""
        scale = self._bundle.checkpoint.rating_scale
        with self._batch_lock:
            personalizer = self._personalizer_for_batch()
            prepared, given = [], []
            for i, rater in enumerate(raters):
                given.append(rating_in_scale(rater.rating, scale, f"raters.{i}.rating"))
                if not rater.ratings:
                    raise DataError("a rater needs their ratings of other items", field=f"raters.{i}.ratings")
                if item_id in {str(k) for k in rater.ratings}:
                    raise DataError(f"the rater's own ratings include item {item_id!r}: put it in 'rating'",
                                    field=f"raters.{i}.ratings")
                try:
                    record = self._user_record(rater.user_attributes)
                    prepared.append((*personalizer.support(rater.ratings), personalizer.encode_user(record)))
                except DataError as exc:
                    raise DataError(str(exc), field=f"raters.{i}.{exc.field or 'ratings'}") from None
                except UnknownIdError as exc:
                    raise DataError(str(exc), field=f"raters.{i}.ratings") from None
            learner = personalizer.learner
            w, c = [], []
            for lo in range(0, len(prepared), batch_size):
                users = personalizer.adapt_encoded(prepared[lo:lo + batch_size])
                w_g, c_g = learner.user_weights(users.params, users.task)
                w.append(w_g.double().cpu().numpy())
                c.append(c_g.double().cpu().numpy())
        return np.concatenate(w), np.concatenate(c), np.asarray(given, dtype=np.float64)

    def _personalizer_for_batch(self) -> "Personalizer":
        """The batch personalizer (``recommend_many``'s; hold ``_batch_lock``), made on first use."""
        if self._batch_personalizer is None:
            self._batch_personalizer = self._batch_factory()
        return self._batch_personalizer

