"""A fitted cold-start recommender as one object: train, save, load, recommend for a new user.

The facade owns one meta-trained checkpoint plus the catalogue's metadata (titles, attributes) and
training popularity, so that serving needs neither the dataset nor the split. It keeps no per-user
state: every call adapts a fresh copy of the parameters, on one of a pool of module replicas
(:mod:`metarec.serve.replicas`), so threads may share one recommender. The saved folder's format is
:mod:`metarec.serve.bundle`.

It is the one place a request is validated: ``k`` / ``n``, id collections and user and item attributes
here (:mod:`metarec.serve.checks`), the ratings themselves by :meth:`Personalizer.support`. The HTTP
service and the CLI only parse. New items (:meth:`add_item`) swap in a grown catalogue under a lock,
in an order that keeps every concurrent reader consistent (item indices never change).
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from metarec._io import jsonable
from metarec.data.dataset import RatingDataset
from metarec.errors import DataError, MetarecError
from metarec.meta.checkpoint import Checkpoint
from metarec.meta.run import RunConfig
from metarec.onboarding.catalogue import item_indices
from metarec.onboarding.questionnaire import AdaptiveQuestionnaire
from metarec.serve.bundle import Bundle, complete_bundle, metadata_records, read_bundle, write_bundle
from metarec.serve.checks import Support, attribute_record, check_count, check_ids
from metarec.serve.item_methods import ItemMethods
from metarec.serve.personalizer import Personalizer
from metarec.serve.replicas import personalizer_pool
from metarec.serve.topk import HNSWConfig, check_top_k
from metarec.serve.training import as_dataset, train_bundle

DEFAULT_REPLICAS = max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class Recommendations:
    """JSON-ready answer of one request: ranked items (with metadata) and the ignored unknown ids."""

    items: list[dict[str, Any]]
    unknown_item_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecommendQuery:
    """One new user's :meth:`ColdStartRecommender.recommend_records` arguments, for :meth:`recommend_many`."""

    ratings: Support
    user_attributes: Mapping[str, object] | None = None
    k: int = 10
    exclude_rated: bool = True


class ColdStartRecommender(ItemMethods):
    """Fit / save / load / recommend around one meta-trained checkpoint (see the module docstring)."""

    def __init__(
        self,
        checkpoint: Checkpoint | None = None,
        *,
        items: pd.DataFrame | None = None,
        train_counts: np.ndarray | None = None,
        panel: pd.DataFrame | None = None,
        dataset_name: str | None = None,
        model_version: str | None = None,
        versions: Mapping[str, str] | None = None,
        replicas: int | None = None,
        top_k: str = "exact", hnsw: HNSWConfig | None = None,
    ) -> None:
        """Wrap a loaded checkpoint, or make an unfitted recommender to call :meth:`fit` on.

        ``replicas``: how many calls may adapt at the same time (default: the CPU count, at most 8);
        more threads than that wait for a free replica. ``top_k``: ``exact`` or ``approximate`` (a faiss
        HNSW index with parameters ``hnsw``, built here once per catalogue; :mod:`metarec.serve.topk`).
        """
        self._checkpoint: Checkpoint | None = None
        self._batch_lock = threading.Lock()  # recommend_many's, and held while a grown catalogue is swapped in
        self._write_lock = threading.Lock()  # one add_item at a time
        self._added: list[str] = []  # ids of items added while serving
        self._replicas = DEFAULT_REPLICAS if replicas is None else int(replicas)
        self._top_k, self._hnsw, self._ranker = check_top_k(top_k), hnsw, None  # the mode first: no faiss fails fast
        if self._replicas < 1:
            raise MetarecError(f"replicas must be >= 1, got {replicas}")
        if checkpoint is not None:
            self._bind(Bundle(checkpoint, items, train_counts, panel, dataset_name, model_version, versions))

    def _bind(self, bundle: Bundle) -> None:
        """Precompute everything a request reads, so requests only read (safe across threads). Swapped in
        metadata first, then the checkpoint, then the replicas: a concurrent reader may see a catalogue
        larger than its replica's, never smaller."""
        bundle = complete_bundle(bundle)
        checkpoint, panel = bundle.checkpoint, bundle.panel
        meta = metadata_records(bundle.items)
        members = (None, None) if panel is None else (panel["panel_user"].to_numpy(), panel["item_idx"].to_numpy())
        questionnaire = AdaptiveQuestionnaire.from_panel(*members, bundle.train_counts)
        # ``checkpoint`` itself stays untouched (for save() and info()): calls run on replicas
        pool, batch_factory, ranker = personalizer_pool(checkpoint, self._replicas, self._top_k, self._hnsw, self._ranker, bundle.members)
        with self._batch_lock:
            self._meta, self._bundle, self._items, self._model_version = meta, bundle, bundle.items, bundle.model_version
            self._user_encodings = {c.name: c for c in checkpoint.features.user_encoder.columns}
            self._user_columns = {name: c.kind for name, c in self._user_encodings.items()}
            self._item_encodings = {c.name: c for c in checkpoint.features.item_encoder.columns}
            self._checkpoint = checkpoint
            self._questionnaire = questionnaire
            self._pool, self._batch_factory, self._ranker = pool, batch_factory, ranker
            self._batch_personalizer: Personalizer | None = None  # recommend_many's, made on first use
            self._similarity = None  # item vectors and their cosine index, made on first use

    @property
    def is_fitted(self) -> bool:
        return self._checkpoint is not None

    def _require_fitted(self) -> Checkpoint:
        if self._checkpoint is None:
            raise MetarecError("this ColdStartRecommender is not fitted: call fit() or ColdStartRecommender.load()")
        return self._checkpoint

    # ------------------------------------------------------------------ training
    def fit(
        self,
        interactions: pd.DataFrame | RatingDataset,
        user_attributes: pd.DataFrame | None = None,
        item_attributes: pd.DataFrame | None = None,
        config: RunConfig | None = None,
        run_dir: str | Path | None = None,
        *,
        name: str = "interactions",
        rating_scale: tuple[float, float] | None = None,
        search: bool | None = None,
        preset: str | None = None,
    ) -> "ColdStartRecommender":
        """Meta-train on a ratings table (or a :class:`RatingDataset`) and keep the best checkpoint.

        Frames: ``interactions`` has ``user_id``, ``item_id``, ``rating`` and optionally ``timestamp``;
        attribute frames are indexed by id or carry a ``user_id`` / ``item_id`` column. ``run_dir`` keeps
        the training run (metrics, checkpoints, the recipe's ``recipe.json``); without it the run lives in a
        temporary folder. Without ``config`` the automatic recipe (:mod:`metarec.meta.recipe`) chooses the
        dataset-dependent settings on validation users (``search``; default: on without ``config``, off
        with one); ``preset`` (a name ``metarec presets`` lists) puts that preset shipped with the package over
        the recipe's base, as ``metarec train --preset NAME`` does: the same model, and what it sets is not searched.
        Returns ``self``, fitted: ``ColdStartRecommender().fit(ratings_frame)``.
        """
        dataset = as_dataset(interactions, user_attributes, item_attributes, name, rating_scale)
        self._bind(train_bundle(dataset, config, run_dir, search=search, preset=preset))
        self._added = []
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write checkpoint, items metadata and a small JSON (:mod:`metarec.serve.bundle`); the folder
        appears whole or not at all."""
        self._require_fitted()
        return write_bundle(directory, self._bundle)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", *, replicas: int | None = None, top_k: str = "exact",
             hnsw: HNSWConfig | None = None) -> "ColdStartRecommender":
        """Load a folder written by :meth:`save`, a run folder of ``metarec train``, or a checkpoint folder.

        For a run or checkpoint folder the item metadata and training popularity come from the run's
        dataset when it can be loaded (else ids only, and onboarding falls back to catalogue order).
        """
        recommender = cls(replicas=replicas, top_k=top_k, hnsw=hnsw)
        recommender._bind(read_bundle(directory, device))
        return recommender

    # ------------------------------------------------------------------ properties
    @property
    def model_version(self) -> str:
        """First 16 hex digits of the sha256 of ``model.safetensors``: identifies the served weights."""
        self._require_fitted()
        return self._model_version

    @property
    def checkpoint(self) -> Checkpoint:
        """The served checkpoint (raises when not fitted)."""
        return self._require_fitted()

    @property
    def dataset_name(self) -> str:
        self._require_fitted()
        return self._bundle.dataset_name

    @property
    def n_items(self) -> int:
        return len(self.checkpoint.item_vocab)

    @property
    def rating_scale(self) -> tuple[float, float]:
        low, high = self.checkpoint.rating_scale
        return float(low), float(high)

    @property
    def feedback(self) -> str:
        """``implicit``: the model ranks items from a user's positives (ids, :meth:`recommend` takes a list of
        them) and its scores are ranking scores; ``explicit``: it predicts ratings from ratings."""
        return "implicit" if self.checkpoint.model_config.implicit else "explicit"

    @property
    def user_attributes(self) -> dict[str, str]:
        """The user attributes the model reads, name -> kind (categorical, numeric or multi)."""
        self._require_fitted()
        return dict(self._user_columns)

    @property
    def items(self) -> pd.DataFrame:
        """The catalogue's metadata, indexed by ``item_id`` (a copy)."""
        self._require_fitted()
        return self._items.copy()

    def info(self) -> dict[str, Any]:
        """What a client may want to know about the served model (JSON-ready)."""
        ckpt = self.checkpoint
        state = dict(ckpt.state)
        return {
            "model_version": self._model_version,
            "dataset": self._bundle.dataset_name,
            "feedback": self.feedback,
            "n_items": self.n_items,
            "n_training_users": len(ckpt.user_vocab),
            "rating_scale": list(self.rating_scale),
            "user_attributes": self.user_attributes,
            "item_metadata": list(self._items.columns),
            "model": jsonable(asdict(ckpt.model_config)),
            "meta": jsonable(asdict(ckpt.learner.config)),
            "training": {k: jsonable(state[k]) for k in ("epoch", "best_epoch", "best_val_mae", "best_val_score", "selection")
                         if k in state},
            "versions": {"metarec": dict(self._bundle.versions).get("metarec")},  # not every library's: no fingerprint
            "top_k": self._ranker.describe(), "ensemble_members": 1 + len(self._bundle.members),
        }

    # ------------------------------------------------------------------ using the model
    def recommend(
        self,
        ratings: Support,
        user_attributes: Mapping[str, object] | None = None,
        k: int = 10,
        exclude_rated: bool = True,
    ) -> pd.DataFrame:
        """Top-``k`` items for a new user, best first: ``item_id``, ``score`` and the item's metadata.
        ``ratings``: ``{item_id: rating}``; for an implicit-feedback model the ids of the items they liked.

        Unknown rated ids are ignored and listed in ``result.attrs["unknown_item_ids"]``; it raises
        :class:`UnknownIdError` only when none of the rated items is known.
        """
        result = self.recommend_records(ratings, user_attributes, k=k, exclude_rated=exclude_rated)
        frame = _records_frame(result.items, ["item_id", "score", *self._items.columns])
        frame.attrs["unknown_item_ids"] = result.unknown_item_ids
        frame.attrs["model_version"] = self._model_version
        return frame

    def recommend_records(
        self,
        ratings: Support,
        user_attributes: Mapping[str, object] | None = None,
        *,
        k: int = 10,
        exclude_rated: bool = True,
    ) -> Recommendations:
        """:meth:`recommend` as JSON-ready dicts (what the HTTP service returns, without pandas)."""
        self._require_fitted()
        check_count(k, "k")
        record = self._user_record(user_attributes)
        with self._pool.borrow() as personalizer:
            user = personalizer.adapt(ratings, record)
            top = user.recommend(int(k), exclude_rated=exclude_rated)
        return Recommendations(self._ranked_records(top), list(user.unknown_item_ids))

    def recommend_many(self, queries: Sequence[RecommendQuery], *, batch_size: int = 4
                       ) -> list[Recommendations | MetarecError]:
        """:meth:`recommend_records` of many new users at once: same answers (to float rounding), less work.

        Users are adapted and scored against the catalogue in vectorised groups of up to ``batch_size``
        (sorted by support size, so little padding), which amortises the per-call overhead that
        dominates one small user. Each query gets its own answer or its own error (a
        :class:`MetarecError`, returned, not raised), so one bad query never fails the others.
        One batch runs at a time (it owns a replica); call it from one thread to avoid waiting.
        """
        self._require_fitted()
        if batch_size < 1:
            raise MetarecError(f"batch_size must be >= 1, got {batch_size}")
        results: list[Recommendations | MetarecError | None] = [None] * len(queries)
        with self._batch_lock:
            if self._batch_personalizer is None:
                self._batch_personalizer = self._batch_factory()
            personalizer = self._batch_personalizer
            ready: list[tuple[int, tuple[list[int], list[float], list[str], Any]]] = []
            for i, query in enumerate(queries):
                try:
                    check_count(query.k, "k")
                    record = self._user_record(query.user_attributes)
                    ready.append((i, (*personalizer.support(query.ratings), personalizer.encode_user(record))))
                except MetarecError as exc:
                    results[i] = exc
            ready.sort(key=lambda entry: len(entry[1][0]))
            for lo in range(0, len(ready), batch_size):
                group = ready[lo:lo + batch_size]
                users = personalizer.adapt_encoded([prepared for _, prepared in group])
                tops = users.recommend([int(queries[i].k) for i, _ in group],
                                       [bool(queries[i].exclude_rated) for i, _ in group])
                for (i, prepared), top in zip(group, tops):
                    results[i] = Recommendations(self._ranked_records(top), list(prepared[2]))
        return results  # type: ignore[return-value]

    def _ranked_records(self, top: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
        vocab = self.checkpoint.item_vocab
        return [{"item_id": item_id, "score": score, **self._meta[vocab.index(item_id)]} for item_id, score in top]

    def predict(
        self,
        ratings: Support,
        item_ids: Sequence[object],
        user_attributes: Mapping[str, object] | None = None,
    ) -> pd.DataFrame:
        """Predicted ratings of ``item_ids`` for a new user: columns ``item_id``, ``score``.

        Unknown ids (rated or asked for) are left out and listed in ``result.attrs["unknown_item_ids"]``.
        """
        result = self.predict_records(ratings, item_ids, user_attributes)
        frame = _records_frame(result.items, ["item_id", "score"])
        frame.attrs["unknown_item_ids"] = result.unknown_item_ids
        frame.attrs["model_version"] = self._model_version
        return frame

    def predict_records(
        self,
        ratings: Support,
        item_ids: Sequence[object],
        user_attributes: Mapping[str, object] | None = None,
    ) -> Recommendations:
        """:meth:`predict` as JSON-ready dicts, in the order asked."""
        self._require_fitted()
        check_ids(item_ids, "item_ids")
        record = self._user_record(user_attributes)
        asked = [str(i) for i in item_ids]
        with self._pool.borrow() as personalizer:
            idx = personalizer.item_vocab.indices(asked, strict=False)  # the replica's own catalogue
            known = idx >= 0
            user = personalizer.adapt(ratings, record)
            scores = user.predict_idx(idx[known]) if known.any() else np.zeros(0, dtype=np.float32)
        items = [{"item_id": i, "score": float(s)} for i, s in zip(np.asarray(asked, dtype=object)[known], scores)]
        unknown = _unique([*user.unknown_item_ids, *(i for i, ok in zip(asked, known) if not ok)])
        return Recommendations(items, unknown)

    def onboarding_items(self, n: int = 10, shown: Iterable[object] = (), rated: Iterable[object] = ()) -> pd.DataFrame:
        """The next ``n`` items to ask a new user to rate, given the items already ``shown`` to them and
        those they ``rated`` (ids; a mapping of ratings works too). Nothing shown yet: the first round.

        The adaptive questionnaire (:mod:`metarec.onboarding.questionnaire`) asks what users who knew and did
        not know the same items as this one have rated most; it gets more answers than the most popular
        items, and a better model after them (docs/onboarding.md). Ask in rounds of about 10. A
        recommender saved without a panel falls back to the most-rated items. Unknown ids are ignored.
        """
        records = self.onboarding_next(n, shown, rated).items
        return _records_frame(records, ["item_id", *self._items.columns])

    def onboarding_records(self, n: int = 10, shown: Iterable[object] = (), rated: Iterable[object] = ()) -> list[dict[str, Any]]:
        """:meth:`onboarding_items` as JSON-ready dicts."""
        return self.onboarding_next(n, shown, rated).items

    def onboarding_next(self, n: int = 10, shown: Iterable[object] = (), rated: Iterable[object] = ()) -> Recommendations:
        """:meth:`onboarding_items` as JSON-ready dicts plus the ids of ``shown`` / ``rated`` the model
        does not know (reported back, never an error: a client's catalogue may run ahead of the model)."""
        checkpoint = self._require_fitted()
        check_count(n, "n")
        check_ids(shown, "shown")
        check_ids(rated, "rated")
        vocab = checkpoint.item_vocab
        (shown_idx, unknown_shown), (rated_idx, unknown_rated) = item_indices(vocab, shown), item_indices(vocab, rated)
        order = self._questionnaire.next_items(shown_idx, rated_idx, int(n))
        return Recommendations([{"item_id": vocab.ids[int(i)], **self._meta[int(i)]} for i in order],
                               _unique([*unknown_shown, *unknown_rated]))

    def item(self, item_id: object) -> dict[str, Any]:
        """One item's metadata (JSON-ready); :class:`UnknownIdError` for an id outside the catalogue."""
        idx = self.checkpoint.item_vocab.index(item_id)
        return {"item_id": self.checkpoint.item_vocab.ids[idx], **self._meta[idx],
                "seen_in_training": bool(self.checkpoint.features.known_items[idx])}

    # ------------------------------------------------------------------ helpers
    def _user_record(self, attributes: Mapping[str, object] | None) -> dict[str, object] | None:
        """A new user's attributes, checked by name and kind (:func:`metarec.serve.checks.attribute_record`)."""
        return attribute_record(attributes, self._user_encodings, "user")


# ---------------------------------------------------------------------- module helpers
def _records_frame(records: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=list(dict.fromkeys(columns)))


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))
