"""A deployable implicit-feedback model: the implicit benchmark's meta-learner trained on one split and
written as a run folder that serving (:mod:`metarec.serve`), ``metarec recommend`` and the model card
read like any other (``metarec train --feedback implicit``).

Why the benchmark's method and split, not a second recipe: the model served is then the one the
benchmark measured, selected on the same validation score (nDCG@20 of validation users, higher is
better), so its reported numbers describe what is deployed - the new items' order by attribute similarity
included (its weight is kept in the checkpoint's state, ``new_item_order``, and applied by serving).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from metarec._io import jsonable, write_text
from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError
from metarec.eval.implicit.config import ImplicitBenchmarkConfig
from metarec.eval.implicit.meta_method import ImplicitMetaMethod
from metarec.eval.implicit.method import validation_score
from metarec.meta.checkpoint import Checkpoint, package_versions, save_checkpoint
from metarec.meta.config import MetaConfig
from metarec.meta.implicit import ImplicitTrainConfig
from metarec.meta.model_card import checkpoint_card, data_sizes, write_model_card
from metarec.meta.run import DataConfig, RunConfig, TrainConfig, typed_values
from metarec.models.config import ModelConfig
from metarec.tasks import make_split

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # ("train", batches done, batches) within an epoch
EpochReport = Callable[[dict], None]  # after each epoch: {"epoch", "val_score", "epochs"}
OVERRIDABLE = {"model": ModelConfig, "meta": MetaConfig, "implicit": ImplicitTrainConfig}


@dataclass(frozen=True)
class ImplicitRun:
    """A fitted implicit model: its run configuration, checkpoint (the selected epoch) and epoch history."""

    config: RunConfig
    checkpoint: Checkpoint
    history: list[dict]
    best_epoch: int
    best_score: float
    metric: str


def checked_overrides(overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``overrides`` of the recipe (sections model, meta, implicit) checked by key and type, so a typo
    is an error naming its section and key rather than a TypeError deep in training."""
    out: dict[str, dict[str, Any]] = {}
    for section, values in (overrides or {}).items():
        kind = OVERRIDABLE.get(section)
        if kind is None:
            raise ConfigError(f"[{section}]: an implicit run takes only the sections {sorted(OVERRIDABLE)}")
        allowed = {f.name for f in fields(kind)}
        bad = sorted(set(values) - allowed)
        if bad:
            raise ConfigError(f"[{section}] has unknown key(s) {bad}; allowed: {sorted(allowed)}")
        out[section] = typed_values(section, kind, values)
    if out.get("model", {}).get("implicit") is False:
        raise ConfigError("[model] implicit = false: an implicit run's model outputs ranking scores")
    return out


def load_implicit_data(data: DataConfig) -> RatingDataset:
    """The positives ``data`` names (``data.feedback`` must be implicit)."""
    from metarec.data.loaders.registry import load_data

    if data.feedback != "implicit":
        raise ConfigError("[data] feedback must be 'implicit' for an implicit run")
    return load_data(data)


def train_implicit_run(data: DataConfig, *, seed: int = 0, protocol: str | None = None,
                       overrides: Mapping[str, Mapping[str, Any]] | None = None,
                       benchmark: ImplicitBenchmarkConfig | None = None, dataset: RatingDataset | None = None,
                       progress: Progress | None = None, on_epoch: EpochReport | None = None) -> ImplicitRun:
    """Fit :class:`ImplicitMetaMethod` on ``seed``'s split of ``data`` (the implicit benchmark's split,
    ``protocol`` melu or time) and keep its selected epoch as a checkpoint. ``dataset``: the positives
    already loaded from ``data``; ``progress`` / ``on_epoch``: each meta-batch / each epoch's validation score."""
    benchmark = benchmark or ImplicitBenchmarkConfig()
    split_config = benchmark.split_config(seed)
    if protocol is not None:
        if protocol == "splits":
            raise ConfigError("protocol 'splits' is not available for implicit feedback (its splits are built "
                              "from the positives); use melu or time")
        split_config = replace(split_config, protocol=protocol)
    dataset = dataset if dataset is not None else load_implicit_data(data)
    if dataset.meta.get("feedback") != "implicit":
        raise ConfigError(f"{dataset.name} holds explicit ratings; an implicit run needs its positives")
    split = make_split(dataset, split_config)
    method = ImplicitMetaMethod(benchmark, checked_overrides(overrides))
    log.info("implicit run: %d meta-train tasks, %d items", len(split.meta_train), dataset.n_items)
    method.fit(split, seed, progress=progress, on_epoch=on_epoch)
    score, points = validation_score(method.score, split, benchmark.selection(seed))
    metric = benchmark.selection_metric
    train = replace(method.train_config, seed=seed)
    config = RunConfig(data=data, split=split_config, model=method.model_config, meta=method.meta_config,
                       train=TrainConfig(seed=seed), implicit=train)
    history = [dict(r) for r in method.history]
    best_epoch = int(method.chosen.get("best_epoch", -1))
    state = {"epoch": len(history), "best_epoch": best_epoch, "best_val_score": score, "selection": metric,
             "best_val": {f"val_{metric}" if p == "all" else f"val_{p}_{metric}": v for p, v in points.items()},
             "data": data_sizes(split), "feedback": "implicit",
             "new_item_order": {"content_weight": float(method.content_weight)}}
    assert method.learner is not None  # fitted above
    assert method.features is not None
    checkpoint = Checkpoint(method.learner, method.features, dataset.user_vocab, dataset.item_vocab,
                            method.model_config, dataset.rating_scale, config.to_dict(), state)
    return ImplicitRun(config, checkpoint, history, best_epoch, score, metric)


def write_implicit_run(run: ImplicitRun, out: str | Path) -> Path:
    """``out`` as a run folder: ``config.toml``, ``metrics.jsonl`` (one line per epoch), ``best/`` (the
    selected epoch's checkpoint; no optimiser moments: an implicit run is not resumed) and ``MODEL_CARD.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", run.config.to_toml())
    write_text(out / "metrics.jsonl", "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in run.history))
    save_checkpoint(run.checkpoint, out / "best", with_optimizer=False)
    write_model_card(out, checkpoint_card(run.checkpoint, versions=package_versions()))
    return out
