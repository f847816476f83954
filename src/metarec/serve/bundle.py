"""The saved recommender folder: a checkpoint plus what serving needs beside it, written whole or not at all.

Serving needs neither the dataset nor the split, so the folder carries the catalogue's metadata and
what meta-training saw of it::

    recommender.json     format, dataset name, feedback (explicit ratings or implicit), model_version,
                         package versions
    checkpoint/          a metarec checkpoint (safetensors + JSON, no optimiser moments)
    items.parquet        the items table (index ``item_id``), in vocabulary order
    item_stats.parquet   ratings per item seen by meta-training (popularity, the onboarding tie-break)
    onboarding_panel.parquet  who rated what among newcomer-like training users (the adaptive
                         onboarding questionnaire's panel; absent in older folders: onboarding by popularity)
    MODEL_CARD.md        data, configuration, validation metrics, intended use and limits (for people)
    item_ratings.safetensors  ratings folded into new items while serving (:mod:`metarec.serve.item_ratings`;
                         absent when there are none)
    members/1, members/2, ...  an ensemble's other members (:mod:`metarec.meta.ensemble`), checkpoints
                         like ``checkpoint/`` (absent for one model)

:func:`read_bundle` also reads a ``metarec train`` run folder or a checkpoint folder; the metadata,
popularity and panel are then rebuilt from the run's dataset when it can still be loaded. Every command
finds a model folder's checkpoint through :func:`model_checkpoint_dir`, and the commands that score
held-out users rebuild its split through :func:`read_run`, so any model folder works with all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from metarec._io import atomic_dir, jsonable, sha256_file, write_json
from metarec.errors import MetarecError, UnknownIdError
from metarec.meta.checkpoint import Checkpoint, load_checkpoint, package_versions, save_checkpoint
from metarec.meta.ensemble import MEMBERS_DIR, check_members, load_members, member_checkpoint_dirs
from metarec.meta.model_card import checkpoint_card, write_model_card
from metarec.meta.run import RunConfig
from metarec.onboarding.catalogue import newcomer_like_ratings, training_counts
from metarec.serve.item_ratings import FILE as RATINGS, ItemRatings, read_ratings, with_offsets, write_ratings
from metarec.tasks import ColdStartSplit

log = logging.getLogger(__name__)

FORMAT = "metarec-recommender"
FORMAT_VERSION = 1
SPEC = "recommender.json"
PANEL = "onboarding_panel.parquet"
RESERVED_COLUMNS = ("item_id", "score")  # metadata columns with these names would shadow the answer


@dataclass(frozen=True)
class Bundle:
    """What a :class:`~metarec.serve.recommender.ColdStartRecommender` is built from. ``panel``: columns
    ``panel_user`` and ``item_idx``; None: no panel (onboarding by popularity)."""

    checkpoint: Checkpoint
    items: pd.DataFrame | None = None
    train_counts: np.ndarray | None = None
    panel: pd.DataFrame | None = None
    dataset_name: str | None = None
    model_version: str | None = None
    versions: Mapping[str, str] | None = None
    ratings: ItemRatings | None = None  # ratings folded into items while serving (none: None)
    members: tuple[Checkpoint, ...] = ()  # an ensemble's other members (one model: none)


def complete_bundle(bundle: Bundle) -> Bundle:
    """``bundle`` with its items aligned to the vocabulary, its counts and panel checked, and defaults
    filled in: without counts, the items meta-training saw count 1 (onboarding in catalogue order). Its
    checkpoint scores rated items with their folded-in offsets (:func:`with_offsets`)."""
    if bundle.members and bundle.ratings is not None and bundle.ratings.stats:
        raise MetarecError("ratings folded into items apply to one model, not to an ensemble's members")
    check_members(bundle.checkpoint, bundle.members)
    checkpoint = with_offsets(bundle.checkpoint, bundle.ratings)
    n = len(checkpoint.item_vocab)
    counts = bundle.train_counts
    if counts is None:
        counts = checkpoint.features.known_items.cpu().numpy()
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (n,):
        raise MetarecError(f"train_counts has shape {counts.shape}, expected ({n},)")
    return Bundle(checkpoint, _align_items(bundle.items, checkpoint.item_vocab.ids), counts,
                  _check_panel(bundle.panel, n),
                  bundle.dataset_name or str(checkpoint.run_config.get("data", {}).get("dataset", "unknown")),
                  bundle.model_version or ensemble_version(tensor_version(checkpoint),
                                                           [tensor_version(m) for m in bundle.members]),
                  dict(bundle.versions or package_versions()), bundle.ratings, tuple(bundle.members))


def write_bundle(directory: str | Path, bundle: Bundle) -> Path:
    """Write a completed ``bundle`` (:func:`complete_bundle`) as a saved folder."""
    directory = Path(directory)
    checkpoint = bundle.checkpoint
    ids = list(checkpoint.item_vocab.ids)
    with atomic_dir(directory) as tmp:
        save_checkpoint(checkpoint, tmp / "checkpoint", with_optimizer=False)
        for m, member in enumerate(bundle.members, start=1):
            save_checkpoint(member, tmp / MEMBERS_DIR / str(m), with_optimizer=False)
        if bundle.ratings is not None and bundle.ratings.stats:
            write_ratings(tmp / RATINGS, bundle.ratings)
        version = _saved_version(tmp)
        if bundle.model_version is not None and version != bundle.model_version:
            log.warning("model_version changed on save (%s -> %s)", bundle.model_version, version)
        _items_for_parquet(bundle.items).to_parquet(tmp / "items.parquet", index=True)
        pd.DataFrame({"item_id": ids, "n_train_ratings": bundle.train_counts}).to_parquet(tmp / "item_stats.parquet",
                                                                                      index=False)
        if bundle.panel is not None:
            pd.DataFrame({"panel_user": bundle.panel["panel_user"].to_numpy(np.int64),
                          "item_id": np.asarray(ids, dtype=object)[bundle.panel["item_idx"].to_numpy()].astype(str)}
                         ).to_parquet(tmp / PANEL, index=False)
        write_json(tmp / SPEC, {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": bundle.dataset_name,
                                "feedback": "implicit" if checkpoint.model_config.implicit else "explicit",
                                "model_version": version, "versions": dict(bundle.versions or {})})
        write_model_card(tmp, checkpoint_card(checkpoint, dataset_name=bundle.dataset_name,
                                              versions=bundle.versions, model_version=version))
    return directory


def read_bundle(directory: str | Path, device: str = "cpu") -> Bundle:
    """A folder written by :func:`write_bundle`, a run folder of ``metarec train``, or a checkpoint folder."""
    directory = Path(directory)
    spec_path = directory / SPEC
    if spec_path.exists():
        return _read_saved(directory, json.loads(spec_path.read_text(encoding="utf-8")), device)
    ckpt_dir = model_checkpoint_dir(directory)
    checkpoint = load_checkpoint(ckpt_dir, device=device)
    items, counts, panel = _run_catalogue(checkpoint)
    versions = json.loads((ckpt_dir / "checkpoint.json").read_text(encoding="utf-8")).get("versions")
    members = load_members(directory, checkpoint, device) if ckpt_dir != directory else ()
    return Bundle(checkpoint, items, counts, panel, None, weights_version(ckpt_dir, directory), versions,
                  members=members)


def _read_saved(directory: Path, spec: dict, device: str) -> Bundle:
    if spec.get("format") != FORMAT:
        raise MetarecError(f"{directory / SPEC}: unknown format {spec.get('format')!r}")
    if int(spec.get("format_version", 0)) > FORMAT_VERSION:
        raise MetarecError(f"{directory / SPEC}: format version {spec['format_version']} is newer than this metarec")
    checkpoint = load_checkpoint(directory / "checkpoint", device=device)
    vocab = checkpoint.item_vocab
    items = _items_from_parquet(pd.read_parquet(directory / "items.parquet"))
    stats = pd.read_parquet(directory / "item_stats.parquet").set_index("item_id")["n_train_ratings"]
    counts = stats.reindex(list(vocab.ids)).fillna(0).to_numpy(np.int64)
    panel = None
    if (directory / PANEL).exists():
        frame = pd.read_parquet(directory / PANEL)
        try:
            item_idx = vocab.indices(frame["item_id"].astype(str).tolist(), strict=True)
        except (KeyError, UnknownIdError) as exc:
            raise MetarecError(f"{directory / PANEL}: {exc}") from None
        panel = pd.DataFrame({"panel_user": frame["panel_user"].to_numpy(np.int64), "item_idx": item_idx})
    ratings = None
    if (directory / RATINGS).exists():
        width = int(getattr(checkpoint.learner.model, "factors", -2)) + 1  # a model with no item vectors: none fits
        ratings = read_ratings(directory / RATINGS, vocab.ids, width)
    return Bundle(checkpoint, items, counts, panel, spec.get("dataset"), _saved_version(directory),
                  spec.get("versions"), ratings, load_members(directory, checkpoint, device))


def ensemble_version(first: str, members: Sequence[str]) -> str:
    """An ensemble's ``model_version``: the first member's weights' version and a digest of the others'
    (one model: its own version)."""
    if not members:
        return first
    digest = hashlib.sha256("\n".join(members).encode("utf-8")).hexdigest()[:8]
    return f"{first}+e{len(members) + 1}.{digest}"


def weights_version(ckpt_dir: Path, directory: Path) -> str:
    """``model_version`` of a model folder ``directory`` whose checkpoint is ``ckpt_dir``: the version of the weights a model folder serves: the checkpoint's file digest, and its ensemble
    members' (:func:`ensemble_version`)."""
    members = member_checkpoint_dirs(directory) if ckpt_dir != directory else []
    return ensemble_version(file_version(ckpt_dir / "model.safetensors"),
                            [file_version(d / "model.safetensors") for d in members])


def _saved_version(directory: Path) -> str:
    """A saved folder's ``model_version``: its weights', and its folded-in ratings' when it has some."""
    version = weights_version(directory / "checkpoint", directory)
    if (directory / RATINGS).exists():
        version += "+r." + sha256_file(directory / RATINGS)[:8]
    return version


def model_checkpoint_dir(directory: str | Path) -> Path:
    """The checkpoint a model folder serves, whichever kind it is: a saved recommender (its
    ``checkpoint/``), a ``metarec train`` run folder (``best``, else ``last``) or a checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MetarecError(f"{directory}: no such folder")
    if (directory / SPEC).is_file():
        return directory / "checkpoint"
    if (directory / "checkpoint.json").is_file():
        return directory
    return best_checkpoint_dir(directory)


def read_run(directory: str | Path, device: str = "cpu") -> tuple[ColdStartSplit, Checkpoint]:
    """A model folder's checkpoint and the split it was trained on, rebuilt from the data its config
    names (for the commands that score held-out users: evaluate, onboard). Any model folder
    (:func:`model_checkpoint_dir`) will do; a run folder's ``config.toml`` wins over the checkpoint's copy."""
    from metarec.data.loaders.registry import load_data
    from metarec.tasks import make_split

    directory = Path(directory)
    checkpoint = load_checkpoint(model_checkpoint_dir(directory), device=device)
    toml = directory / "config.toml"
    config = RunConfig.from_toml(toml) if toml.is_file() else RunConfig.from_dict(checkpoint.run_config)
    try:
        dataset = load_data(config.data)
    except (MetarecError, OSError) as exc:
        raise MetarecError(f"{directory}: the data the model was trained on ({config.data.dataset!r}) cannot be "
                           f"loaded again ({exc}); scoring held-out users needs it (recommend and serve do not)"
                           ) from None
    if dataset.item_vocab != checkpoint.item_vocab:
        raise MetarecError(f"{directory}: dataset {dataset.name!r} no longer matches the model's catalogue")
    return make_split(dataset, config.split), checkpoint


def best_checkpoint_dir(run_dir: Path) -> Path:
    """The checkpoint a run serves (``best``, else ``last``), as :func:`metarec.meta.trainer.load_best` picks."""
    for name in ("best", "last"):
        if (run_dir / name / "checkpoint.json").exists():
            return run_dir / name
    raise MetarecError(f"{run_dir}: no checkpoint found (expected a saved recommender, "
                       f"{run_dir}/best, {run_dir}/last or a checkpoint folder)")


def file_version(path: Path) -> str:
    """First 16 hex digits of the file's sha256: the served weights' ``model_version``."""
    return sha256_file(path)[:16]


def tensor_version(checkpoint: Checkpoint) -> str:
    """A version for a checkpoint never written to disk: sha256 of the serialised tensors."""
    from safetensors.torch import save

    learner = checkpoint.learner
    tensors = {k: v.detach().cpu().contiguous() for k, v in learner.model.state_dict().items()}
    tensors.update({f"inner_lr.{n}": p.detach().cpu().contiguous() for n, p in learner.inner_lrs.items()})
    return hashlib.sha256(save(tensors)).hexdigest()[:16]


def split_catalogue(split: ColdStartSplit) -> tuple[np.ndarray, pd.DataFrame]:
    """What serving keeps of a split: ratings per item in meta-training, and the onboarding panel
    ((panel_user, item_idx) pairs of its newcomer-like meta-train users)."""
    frame = newcomer_like_ratings(split)
    panel = pd.DataFrame({"panel_user": frame["user_idx"].to_numpy(np.int64),
                          "item_idx": frame["item_idx"].to_numpy(np.int64)})
    return training_counts(split), panel


def metadata_records(items: pd.DataFrame) -> list[dict[str, Any]]:
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
            value = jsonable(value)
            if value is not None:
                record[column] = value
        records.append(record)
    return records


def _run_catalogue(checkpoint: Checkpoint) -> tuple[pd.DataFrame | None, np.ndarray | None, pd.DataFrame | None]:
    """Items table, training popularity and onboarding panel of a ``metarec train`` run, rebuilt from its dataset."""
    from metarec.data.loaders.registry import load_data
    from metarec.tasks import make_split

    try:
        config = RunConfig.from_dict(checkpoint.run_config)
        refused = _not_a_data_source(config.data)
        if refused:
            log.warning("item metadata not loaded: %s; serving ids only", refused)
            return None, None, None
        dataset = load_data(config.data)
    except (MetarecError, OSError, ValueError) as exc:
        log.warning("item metadata unavailable (%s); serving ids only", exc)
        return None, None, None
    if dataset.item_vocab != checkpoint.item_vocab:
        log.warning("dataset %r no longer matches the checkpoint's catalogue; serving ids only", dataset.name)
        return None, None, None
    counts, panel = split_catalogue(make_split(dataset, config.split))
    return dataset.items, counts, panel


TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".dat", ".parquet", ".pq", ".inter")


def _not_a_data_source(data) -> str | None:
    """Why a run's ``[data]`` section is not read when serving it (None: it may be). A run folder can come
    from anyone: its config must not make the server open an arbitrary file (``../../etc/shadow``), so
    only a registered dataset name, a folder saved by ``RatingDataset.save`` or RecBole files, or tables
    named by a data-table suffix are read."""
    from metarec.data.loaders.registry import REGISTRY

    if not data.is_table and (data.dataset in REGISTRY or data.dataset == "synthetic"):
        return None
    for name in (data.dataset, data.users, data.items):
        if name is None:
            continue
        path = Path(name)
        suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
        if path.is_dir() and ((path / "dataset.json").is_file() or any(path.glob("*.inter"))):
            continue
        if not suffixes or suffixes[-1] not in TABLE_SUFFIXES:
            return f"{name!r} is neither a known dataset nor a data table ({', '.join(TABLE_SUFFIXES)})"
    return None


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
