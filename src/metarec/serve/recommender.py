"""A fitted cold-start recommender as one object: train, save, load, recommend for a new user.

The facade owns one meta-trained checkpoint plus the catalogue's metadata (titles, attributes) and
training popularity, so that serving needs neither the dataset nor the split. It keeps no per-user
state: every call adapts a fresh copy of the parameters.

Thread safety: ``torch.func.functional_call`` swaps a module's parameters in place for the duration
of a call, so two threads adapting through the *same* module object see each other's tensors (torch
raises, or worse). Each concurrent call therefore borrows one of a small pool of replicas: separate
module objects that share every parameter and buffer tensor (read-only here), so a replica costs a
few kilobytes, not a copy of the weights.

A saved recommender folder holds::

    recommender.json     format, dataset name, model_version, package versions
    checkpoint/          a metarec checkpoint (safetensors + JSON, no optimiser moments)
    items.parquet        the items table (index ``item_id``), in vocabulary order
    item_stats.parquet   ratings per item seen by meta-training (popularity, the onboarding tie-break)
    onboarding_panel.parquet  who rated what among newcomer-like training users (the adaptive
                         onboarding questionnaire's panel; absent in older folders: onboarding by popularity)

It is written whole under a temporary name and then renamed into place.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from metarec._atomic import write_json
from metarec.data.dataset import RatingDataset
from metarec.errors import DataError, MetarecError, UnknownIdError
from metarec.meta.checkpoint import Checkpoint, load_checkpoint, package_versions, save_checkpoint
from metarec.meta.personalize import Personalizer
from metarec.meta.run import RunConfig
from metarec.serve.questionnaire import AdaptiveQuestionnaire

log = logging.getLogger(__name__)

FORMAT = "metarec-recommender"
FORMAT_VERSION = 1
RESERVED_COLUMNS = ("item_id", "score")  # metadata columns with these names would shadow the answer
DEFAULT_REPLICAS = max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class Recommendations:
    """JSON-ready answer of one request: ranked items (with metadata) and the ignored unknown ids."""

    items: list[dict[str, Any]]
    unknown_item_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecommendQuery:
    """One new user's :meth:`ColdStartRecommender.recommend_records` arguments, for :meth:`recommend_many`."""

    ratings: Mapping[object, float]
    user_attributes: Mapping[str, object] | None = None
    k: int = 10
    exclude_rated: bool = True


class ColdStartRecommender:
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
    ) -> None:
        """Wrap a loaded checkpoint, or make an unfitted recommender to call :meth:`fit` on.

        ``replicas``: how many calls may adapt at the same time (default: the CPU count, at most 8);
        more threads than that wait for a free replica.
        """
        self._checkpoint: Checkpoint | None = None
        self._replicas = DEFAULT_REPLICAS if replicas is None else int(replicas)
        if self._replicas < 1:
            raise MetarecError(f"replicas must be >= 1, got {replicas}")
        if checkpoint is not None:
            self._bind(checkpoint, items=items, train_counts=train_counts, panel=panel, dataset_name=dataset_name,
                       model_version=model_version, versions=versions)

    def _bind(
        self,
        checkpoint: Checkpoint,
        *,
        items: pd.DataFrame | None,
        train_counts: np.ndarray | None,
        panel: pd.DataFrame | None,
        dataset_name: str | None,
        model_version: str | None,
        versions: Mapping[str, str] | None,
    ) -> None:
        """Precompute everything a request reads, so requests only read (safe across threads)."""
        vocab = checkpoint.item_vocab
        n = len(vocab)
        if train_counts is None:  # no popularity known: items meta-training saw, in catalogue order
            train_counts = checkpoint.features.known_items.cpu().numpy().astype(np.int64)
        counts = np.asarray(train_counts, dtype=np.int64)
        if counts.shape != (n,):
            raise MetarecError(f"train_counts has shape {counts.shape}, expected ({n},)")
        self._items = _align_items(items, vocab.ids)
        self._meta = _metadata_records(self._items)
        self._train_counts = counts
        self._panel = _check_panel(panel, n)
        if self._panel is None:  # an empty panel never adapts: most-rated first, ties by catalogue order
            no_one = np.zeros(0, np.int64)
            self._questionnaire = AdaptiveQuestionnaire(no_one, no_one, n, np.arange(n), counts)
        else:
            self._questionnaire = AdaptiveQuestionnaire(self._panel["panel_user"].to_numpy(),
                                                        self._panel["item_idx"].to_numpy(), n,
                                                        np.flatnonzero(counts > 0), counts)
        self._dataset_name = dataset_name or str(checkpoint.run_config.get("data", {}).get("dataset", "unknown"))
        self._model_version = model_version or _tensor_version(checkpoint)
        self._versions = dict(versions or package_versions())
        self._user_columns = {c.name: c.kind for c in checkpoint.features.user_encoder.columns}
        # Calls only ever run on replicas, copied from a private template no call uses: copying (or
        # saving) a module while another thread is inside functional_call on it would see that
        # thread's swapped-in tensors. ``checkpoint`` itself stays untouched, for save() and info().
        template = _replica(checkpoint)
        self._pool = _Pool(Personalizer(_replica(template)), lambda: Personalizer(_replica(template)), self._replicas)
        # recommend_many's own replica (made on first use: each holds the catalogue's ~60 MB Gram matrix),
        # one batch at a time
        self._batch_factory = lambda: Personalizer(_replica(template))
        self._batch_personalizer: Personalizer | None = None
        self._batch_lock = threading.Lock()
        self._checkpoint = checkpoint

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
        with one); ``preset`` starts from a preset shipped with the package instead of the recipe's base.
        Returns ``self``, fitted: ``ColdStartRecommender().fit(ratings_frame)``.
        """
        from metarec.meta.recipe import choose_recipe, preset as load_preset, recipe_base
        from metarec.meta.trainer import Trainer
        from metarec.tasks import make_split

        if isinstance(interactions, RatingDataset):
            if user_attributes is not None or item_attributes is not None:
                raise DataError("pass attribute tables inside the RatingDataset, not beside it")
            dataset = interactions
        elif isinstance(interactions, pd.DataFrame):
            dataset = RatingDataset.from_frames(name, interactions, user_attributes, item_attributes,
                                                rating_scale=rating_scale)
        else:
            raise DataError(f"interactions must be a DataFrame or a RatingDataset, not {type(interactions).__name__}")
        if search is None:
            search = config is None
        config = config or (load_preset(preset) if preset else recipe_base())
        config = config.override("data", dataset=dataset.name)
        split = make_split(dataset, config.split)
        with tempfile.TemporaryDirectory(prefix="metarec-fit-") as tmp:
            directory = Path(run_dir) if run_dir is not None else Path(tmp)
            if search:
                from metarec._atomic import write_json

                chosen = choose_recipe(split, config)
                chosen.trainer.write_run(directory)
                write_json(directory / "recipe.json", chosen.to_dict())
            else:
                Trainer(config, split=split, run_dir=directory).fit()
            ckpt_dir = _best_dir(directory)
            checkpoint = load_checkpoint(ckpt_dir, device=config.train.device)
            version = _file_version(ckpt_dir / "model.safetensors")
        self._bind(checkpoint, items=dataset.items, train_counts=_train_counts(split, dataset.n_items),
                   panel=_panel(split), dataset_name=dataset.name, model_version=version, versions=None)
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write checkpoint, items metadata and a small JSON; the folder appears whole or not at all."""
        checkpoint = self._require_fitted()
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            save_checkpoint(checkpoint, tmp / "checkpoint", with_optimizer=False)
            version = _file_version(tmp / "checkpoint" / "model.safetensors")
            if version != self._model_version:
                log.warning("model_version changed on save (%s -> %s)", self._model_version, version)
            _items_for_parquet(self._items).to_parquet(tmp / "items.parquet", index=True)
            pd.DataFrame({"item_id": list(checkpoint.item_vocab.ids), "n_train_ratings": self._train_counts}
                         ).to_parquet(tmp / "item_stats.parquet", index=False)
            if self._panel is not None:
                ids = np.asarray(checkpoint.item_vocab.ids, dtype=object)
                pd.DataFrame({"panel_user": self._panel["panel_user"].to_numpy(np.int64),
                              "item_id": ids[self._panel["item_idx"].to_numpy()].astype(str)}
                             ).to_parquet(tmp / "onboarding_panel.parquet", index=False)
            write_json(tmp / "recommender.json", {
                "format": FORMAT, "format_version": FORMAT_VERSION, "dataset": self._dataset_name,
                "model_version": version, "versions": self._versions,
            })
            _replace_dir(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", *, replicas: int | None = None) -> "ColdStartRecommender":
        """Load a folder written by :meth:`save`, a run folder of ``metarec train``, or a checkpoint folder.

        For a run or checkpoint folder the item metadata and training popularity come from the run's
        dataset when it can be loaded (else ids only, and onboarding falls back to catalogue order).
        """
        directory = Path(directory)
        spec_path = directory / "recommender.json"
        if spec_path.exists():
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
            if spec.get("format") != FORMAT:
                raise MetarecError(f"{spec_path}: unknown format {spec.get('format')!r}")
            if int(spec.get("format_version", 0)) > FORMAT_VERSION:
                raise MetarecError(f"{spec_path}: format version {spec['format_version']} is newer than this metarec")
            checkpoint = load_checkpoint(directory / "checkpoint", device=device)
            items = _items_from_parquet(pd.read_parquet(directory / "items.parquet"))
            stats = pd.read_parquet(directory / "item_stats.parquet").set_index("item_id")["n_train_ratings"]
            counts = stats.reindex(list(checkpoint.item_vocab.ids)).fillna(0).to_numpy(np.int64)
            panel = None
            if (directory / "onboarding_panel.parquet").exists():
                frame = pd.read_parquet(directory / "onboarding_panel.parquet")
                try:
                    item_idx = checkpoint.item_vocab.indices(frame["item_id"].astype(str).tolist(), strict=True)
                except (KeyError, UnknownIdError) as exc:
                    raise MetarecError(f"{directory / 'onboarding_panel.parquet'}: {exc}") from None
                panel = pd.DataFrame({"panel_user": frame["panel_user"].to_numpy(np.int64), "item_idx": item_idx})
            return cls(checkpoint, items=items, train_counts=counts, panel=panel, dataset_name=spec.get("dataset"),
                       model_version=_file_version(directory / "checkpoint" / "model.safetensors"),
                       versions=spec.get("versions"), replicas=replicas)
        if (directory / "checkpoint.json").exists():
            ckpt_dir = directory
        elif directory.is_dir():
            ckpt_dir = _best_dir(directory)
        else:
            raise MetarecError(f"{directory}: no such folder")
        checkpoint = load_checkpoint(ckpt_dir, device=device)
        items, counts, panel = _run_catalogue(checkpoint)
        versions = json.loads((ckpt_dir / "checkpoint.json").read_text(encoding="utf-8")).get("versions")
        return cls(checkpoint, items=items, train_counts=counts, panel=panel,
                   model_version=_file_version(ckpt_dir / "model.safetensors"), versions=versions,
                   replicas=replicas)

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
        return self._dataset_name

    @property
    def n_items(self) -> int:
        return len(self.checkpoint.item_vocab)

    @property
    def rating_scale(self) -> tuple[float, float]:
        low, high = self.checkpoint.rating_scale
        return float(low), float(high)

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
        from dataclasses import asdict

        ckpt = self.checkpoint
        state = dict(ckpt.state)
        return {
            "model_version": self._model_version,
            "dataset": self._dataset_name,
            "n_items": self.n_items,
            "n_training_users": len(ckpt.user_vocab),
            "rating_scale": list(self.rating_scale),
            "user_attributes": self.user_attributes,
            "item_metadata": [c for c in self._items.columns if c not in RESERVED_COLUMNS],
            "model": _jsonable(asdict(ckpt.model_config)),
            "meta": _jsonable(asdict(ckpt.learner.config)),
            "training": {k: _jsonable(state[k]) for k in ("epoch", "best_epoch", "best_val_mae") if k in state},
            "versions": dict(self._versions),
        }

    # ------------------------------------------------------------------ using the model
    def recommend(
        self,
        ratings: Mapping[object, float],
        user_attributes: Mapping[str, object] | None = None,
        k: int = 10,
        exclude_rated: bool = True,
    ) -> pd.DataFrame:
        """Top-``k`` items for a new user, best first: ``item_id``, ``score`` and the item's metadata.

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
        ratings: Mapping[object, float],
        user_attributes: Mapping[str, object] | None = None,
        *,
        k: int = 10,
        exclude_rated: bool = True,
    ) -> Recommendations:
        """:meth:`recommend` as JSON-ready dicts (what the HTTP service returns, without pandas)."""
        self._require_fitted()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}", field="k")
        record = self._user_record(user_attributes)
        with self._pool.borrow() as personalizer:
            user = personalizer.adapt(ratings, record)
            top = user.recommend(int(k), exclude_rated=exclude_rated)
        return Recommendations(self._ranked_records(top), list(user.unknown_item_ids))

    def recommend_many(
        self,
        queries: Sequence[RecommendQuery],
        *,
        batch_size: int = 4,
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
                    k = query.k
                    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                        raise DataError(f"k must be a positive integer, got {k!r}", field="k")
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
        ratings: Mapping[object, float],
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
        ratings: Mapping[object, float],
        item_ids: Sequence[object],
        user_attributes: Mapping[str, object] | None = None,
    ) -> Recommendations:
        """:meth:`predict` as JSON-ready dicts, in the order asked."""
        self._require_fitted()
        if isinstance(item_ids, (str, bytes)):
            raise DataError("item_ids must be a list of ids, not one string", field="item_ids")
        record = self._user_record(user_attributes)
        asked = [str(i) for i in item_ids]
        idx = self.checkpoint.item_vocab.indices(asked, strict=False)
        known = idx >= 0
        with self._pool.borrow() as personalizer:
            user = personalizer.adapt(ratings, record)
            scores = user.predict_idx(idx[known]) if known.any() else np.zeros(0, dtype=np.float32)
        items = [{"item_id": i, "score": float(s)} for i, s in zip(np.asarray(asked, dtype=object)[known], scores)]
        unknown = _unique([*user.unknown_item_ids, *(i for i, ok in zip(asked, known) if not ok)])
        return Recommendations(items, unknown)

    def onboarding_items(self, n: int = 10, shown: Iterable[object] = (), rated: Iterable[object] = ()) -> pd.DataFrame:
        """The next ``n`` items to ask a new user to rate, given the items already ``shown`` to them and
        those they ``rated`` (ids; a mapping of ratings works too). Nothing shown yet: the first round.

        The adaptive questionnaire (:mod:`metarec.serve.questionnaire`) asks what users who knew and did
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
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DataError(f"n must be a positive integer, got {n!r}", field="n")
        for name, value in (("shown", shown), ("rated", rated)):
            if isinstance(value, (str, bytes)):
                raise DataError(f"{name} must be a collection of item ids, not one string", field=name)
        shown_ids, rated_ids = [str(i) for i in shown], [str(i) for i in rated]
        vocab = checkpoint.item_vocab
        shown_idx = vocab.indices(shown_ids, strict=False) if shown_ids else np.zeros(0, np.int64)
        rated_idx = vocab.indices(rated_ids, strict=False) if rated_ids else np.zeros(0, np.int64)
        unknown = _unique([i for i, j in zip([*shown_ids, *rated_ids], [*shown_idx, *rated_idx]) if j < 0])
        shown_idx, rated_idx = shown_idx[shown_idx >= 0], rated_idx[rated_idx >= 0]
        order = self._questionnaire.next_items(shown_idx, rated_idx, int(n))
        ids = vocab.ids
        return Recommendations([{"item_id": ids[int(i)], **self._meta[int(i)]} for i in order], unknown)

    def item(self, item_id: object) -> dict[str, Any]:
        """One item's metadata (JSON-ready); :class:`UnknownIdError` for an id outside the catalogue."""
        idx = self.checkpoint.item_vocab.index(item_id)
        return {"item_id": self.checkpoint.item_vocab.ids[idx], **self._meta[idx],
                "seen_in_training": bool(self.checkpoint.features.known_items[idx])}

    # ------------------------------------------------------------------ helpers
    def _user_record(self, attributes: Mapping[str, object] | None) -> dict[str, object] | None:
        """Check a new user's attributes by name and shape: a silently ignored typo would go unnoticed."""
        if attributes is None:
            return None
        if not isinstance(attributes, Mapping):
            raise DataError("user attributes must be a mapping {name: value}", field="user")
        unknown = sorted(set(attributes) - set(self._user_columns))
        if unknown:
            raise DataError(f"unknown user attribute(s) {unknown}; the model reads {sorted(self._user_columns)}",
                            field="user")
        record: dict[str, object] = {}
        for name, value in attributes.items():
            kind = self._user_columns[name]
            if kind == "multi":
                value = None if value is None else [value] if isinstance(value, (str, int, float)) else list(value)
            elif isinstance(value, (list, tuple, dict)):
                raise DataError(f"user attribute {name!r} takes one value, got {type(value).__name__}", field=f"user.{name}")
            record[name] = value
        return record


# ---------------------------------------------------------------------- module helpers
class _Pool:
    """Up to ``size`` personalizers, created on first need; a borrower waits when all are in use."""

    def __init__(self, first: Personalizer, factory: Callable[[], Personalizer], size: int) -> None:
        self._free: queue.LifoQueue[Personalizer] = queue.LifoQueue()
        self._free.put(first)
        self._factory = factory
        self._size = size
        self._created = 1
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Personalizer]:
        try:
            item = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                create = self._created < self._size
                self._created += int(create)
            try:
                item = self._factory() if create else self._free.get()
            except BaseException:
                if create:
                    with self._lock:
                        self._created -= 1
                raise
        try:
            yield item
        finally:
            self._free.put(item)


def _replica(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with its own module objects but the same tensors (see the module docstring)."""
    learner = checkpoint.learner
    features = checkpoint.features
    tensors = [*learner.model.parameters(), *learner.model.buffers(), *learner.inner_lrs.values(),
               *features.user_features.single.values(), *features.user_features.multi.values(),
               *learner.user_features.single.values(), *learner.user_features.multi.values()]
    memo = {id(t): t for t in tensors}
    return dataclasses.replace(checkpoint, learner=copy.deepcopy(learner, memo))


def _best_dir(run_dir: Path) -> Path:
    """The checkpoint :func:`load_best` would pick (``best``, else ``last``)."""
    for name in ("best", "last"):
        if (run_dir / name / "checkpoint.json").exists():
            return run_dir / name
    raise MetarecError(f"{run_dir}: no checkpoint found (expected a saved recommender, "
                       f"{run_dir}/best, {run_dir}/last or a checkpoint folder)")


def _file_version(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _tensor_version(checkpoint: Checkpoint) -> str:
    """A version for a checkpoint never written to disk: sha256 of the serialised tensors."""
    from safetensors.torch import save

    learner = checkpoint.learner
    tensors = {k: v.detach().cpu().contiguous() for k, v in learner.model.state_dict().items()}
    tensors.update({f"inner_lr.{n}": p.detach().cpu().contiguous() for n, p in learner.inner_lrs.items()})
    return hashlib.sha256(save(tensors)).hexdigest()[:16]


def _train_counts(split: Any, n_items: int) -> np.ndarray:
    """Ratings per item that meta-training used (support and query of meta-train tasks)."""
    rows = split.train_ratings()
    return np.bincount(rows["item_idx"].to_numpy(np.int64), minlength=n_items).astype(np.int64)


def _panel(split: Any) -> pd.DataFrame:
    """The onboarding panel of a split: (panel_user, item_idx) pairs of its newcomer-like meta-train users."""
    from metarec.eval.onboarding import newcomer_like_ratings

    frame = newcomer_like_ratings(split)
    return pd.DataFrame({"panel_user": frame["user_idx"].to_numpy(np.int64), "item_idx": frame["item_idx"].to_numpy(np.int64)})


def _check_panel(panel: pd.DataFrame | None, n_items: int) -> pd.DataFrame | None:
    if panel is None:
        return None
    missing = {"panel_user", "item_idx"} - set(panel.columns)
    if missing:
        raise MetarecError(f"the onboarding panel lacks column(s) {sorted(missing)}")
    item = panel["item_idx"].to_numpy()
    if len(item) and (item.min() < 0 or item.max() >= n_items):
        raise MetarecError(f"the onboarding panel has item indices outside [0, {n_items})")
    return panel.reset_index(drop=True)


def _run_catalogue(checkpoint: Checkpoint) -> tuple[pd.DataFrame | None, np.ndarray | None, pd.DataFrame | None]:
    """Items table, training popularity and onboarding panel of a ``metarec train`` run, rebuilt from its dataset."""
    from metarec.data.loaders.registry import load_data
    from metarec.tasks import make_split

    try:
        config = RunConfig.from_dict(checkpoint.run_config)
        dataset = load_data(config.data)
    except (MetarecError, OSError, ValueError) as exc:
        log.warning("item metadata unavailable (%s); serving ids only", exc)
        return None, None, None
    if dataset.item_vocab != checkpoint.item_vocab:
        log.warning("dataset %r no longer matches the checkpoint's catalogue; serving ids only", dataset.name)
        return None, None, None
    split = make_split(dataset, config.split)
    return dataset.items, _train_counts(split, dataset.n_items), _panel(split)


def _align_items(items: pd.DataFrame | None, ids: Sequence[str]) -> pd.DataFrame:
    """The items table in vocabulary order, indexed by string id, with no reserved column names."""
    index = pd.Index(list(ids), name="item_id")
    if items is None:
        return pd.DataFrame(index=index)
    items = items.copy()
    if "item_id" in items.columns:
        items = items.set_index("item_id")
    items.index = items.index.astype(str)
    items = items[~items.index.duplicated()]
    items = items.drop(columns=[c for c in RESERVED_COLUMNS if c in items.columns])
    items.columns = [str(c) for c in items.columns]
    out = items.reindex(index)
    out.index.name = "item_id"
    return out


def _metadata_records(items: pd.DataFrame) -> list[dict[str, Any]]:
    """Per item (vocabulary order), its non-missing metadata as JSON-ready values; built once at load."""
    items = items.copy()
    for column in items.columns:  # a year stored as float (NaN for missing) is shown as 1995, not 1995.0
        if pd.api.types.is_float_dtype(items[column].dtype):
            values = pd.to_numeric(items[column], errors="coerce").astype("float64").to_numpy()
            finite = values[np.isfinite(values)]
            if len(finite) and np.all(finite == np.round(finite)) and np.all(np.abs(finite) < 2**53):
                items[column] = items[column].astype("Int64")
    columns = list(items.columns)
    records = []
    for row in items.itertuples(index=False, name=None):
        record = {}
        for column, value in zip(columns, row):
            value = _jsonable(value)
            if value is not None:
                record[column] = value
        records.append(record)
    return records


def _jsonable(value: Any) -> Any:
    """Plain Python for JSON: numpy scalars and arrays, tuples, pandas NA and NaN (-> None)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _records_frame(records: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=list(dict.fromkeys(columns)))


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _items_for_parquet(items: pd.DataFrame) -> pd.DataFrame:
    """Tuples (multi-valued attributes) become lists, which Parquet stores natively."""
    out = items.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: list(v) if isinstance(v, tuple) else v)
    return out


def _items_from_parquet(items: pd.DataFrame) -> pd.DataFrame:
    out = items.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: tuple(v.tolist()) if isinstance(v, np.ndarray) else v)
    out.index = out.index.astype(str)
    return out


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` onto ``target``: readers see the old folder or the new one, never a half-written one."""
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        new.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
