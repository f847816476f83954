"""The item side of :class:`~metarec.serve.recommender.ColdStartRecommender`: item vectors, similar items,
and new items added while serving.

A base class of the facade (its own file to keep each short): the methods read the facade's state and
check their arguments with :mod:`metarec.serve.checks`, as every other method of the facade does.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from metarec.data.vocab import Vocabulary
from metarec.errors import DataError
from metarec.serve.bundle import Bundle
from metarec.serve.checks import attribute_record, check_count
from metarec.serve.item_vectors import CosineIndex, factor_vectors, vectors_frame
from metarec.serve.new_items import grown_counts, items_version, with_new_item, with_new_metadata

if TYPE_CHECKING:
    from metarec.data.encoding import ColumnEncoding
    from metarec.serve.personalizer import Personalizer
    from metarec.serve.replicas import ReplicaPool

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
    _added: list[str]  # ids added while serving, in order
    _similarity: "tuple[Any, Vocabulary, CosineIndex, np.ndarray, np.ndarray] | None"

    def _require_fitted(self) -> Any:  # the facade's
        raise NotImplementedError

    def _bind(self, bundle: Bundle) -> None:  # the facade's
        raise NotImplementedError

    def item(self, item_id: object) -> dict[str, Any]:  # the facade's
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
        an ANN index or a downstream model. :class:`MetarecError` for a model without item vectors
        (:mod:`metarec.serve.item_vectors` says which have them)."""
        vocab, _, q, bias = self._vectors()
        return vectors_frame(vocab.ids, q, bias)

    def similar_items(self, item_id: object, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` items closest to ``item_id`` by cosine similarity of their vectors (``score``), best first,
        with their metadata; :class:`UnknownIdError` for an id outside the catalogue."""
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
            added = [*self._added, item_id]
            version = items_version(self._model_version.split("+")[0], added)
            self._bind(Bundle(checkpoint, with_new_metadata(bundle.items, item_id, metadata),
                              grown_counts(bundle.train_counts), bundle.panel, bundle.dataset_name, version,
                              bundle.versions))
            self._added = added
        return self.item(item_id)
