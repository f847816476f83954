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

from metarec._io import atomic_dir, jsonable, write_text
from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError, MetarecError
from metarec.eval.implicit.config import ImplicitBenchmarkConfig
from metarec.eval.implicit.ensemble_method import ImplicitEnsembleMethod
from metarec.eval.implicit.meta_method import ImplicitMetaMethod
from metarec.eval.implicit.method import validation_score
from metarec.meta.checkpoint import Checkpoint, load_checkpoint, package_versions, save_checkpoint
from metarec.meta.config import MetaConfig
from metarec.meta.ensemble import member_dir, member_seed_of
from metarec.meta.implicit import Checkpointer, ImplicitResume, ImplicitTrainConfig, ImplicitTrainState
from metarec.meta.model_card import checkpoint_card, data_sizes, write_model_card
from metarec.meta.run import DataConfig, RunConfig, TrainConfig, typed_values
from metarec.models.config import ModelConfig
from metarec.tasks import make_split
from metarec.tasks.split import ColdStartSplit

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
                       progress: Progress | None = None, on_epoch: EpochReport | None = None,
                       run_dir: str | Path | None = None, resume: bool = False, members: int = 1) -> ImplicitRun:
    """Fit :class:`ImplicitMetaMethod` on ``seed``'s split of ``data`` (the implicit benchmark's split,
    ``protocol`` melu or time) and keep its selected epoch as a checkpoint. ``dataset``: the positives
    already loaded from ``data``; ``progress`` / ``on_epoch``: each meta-batch / each epoch's validation score.

    ``run_dir``: ``config.toml`` is written there first and, after every epoch, ``best/`` (when the epoch is
    the best so far), ``metrics.jsonl`` and ``last/`` (with the Adam moments), in that order, so that a run
    killed at any point can be continued; ``resume``: continue the run there from ``last/`` (its
    ``config.toml`` and data must be the ones given), ending where the uninterrupted run would have.

    ``members`` > 1: an ensemble (:mod:`metarec.meta.ensemble`): members 1 .. M-1 train from seed + 1000 m
    after the first (each written whole to ``run_dir/members/m`` when it has finished; a resumed run keeps
    them), the new items' content weight is chosen for the members' mean, and the returned checkpoint (the
    first member) keeps that weight and the ensemble's validation score."""
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
    metric = benchmark.selection_metric
    train = replace(method.train_config, seed=seed)
    config = RunConfig(data=data, split=split_config, model=method.model_config, meta=method.meta_config,
                       train=TrainConfig(seed=seed, members=members), implicit=train)
    log.info("implicit run: %d meta-train tasks, %d items", len(split.meta_train), dataset.n_items)
    checkpoint, resumed = None, None
    if run_dir is not None:
        checkpoint, resumed = _run_folder(Path(run_dir), config, dataset, split, method, metric, resume)
    elif resume:
        raise ConfigError("resuming an implicit run needs its run folder")
    method.fit(split, seed, progress=progress, on_epoch=on_epoch, checkpoint=checkpoint, resume=resumed)
    if members > 1:
        method = _ensemble(method, members, config, dataset, split, benchmark, seed, overrides, run_dir, progress)
    return _fitted_run(method, config, dataset, split, benchmark, seed, ensemble_members=members)


def _ensemble(first: ImplicitMetaMethod, members: int, config: RunConfig, dataset: RatingDataset,
              split: ColdStartSplit, benchmark: ImplicitBenchmarkConfig, seed: int,
              overrides: Mapping[str, Mapping[str, Any]] | None, run_dir: str | Path | None,
              progress: Progress | None) -> ImplicitEnsembleMethod:
    """``first`` and members 1 .. M-1 (trained, or read back from ``run_dir/members/m``) as one ensemble."""
    others = []
    for m in range(1, members):
        target = None if run_dir is None else member_dir(run_dir, m)
        member = ImplicitMetaMethod(benchmark, checked_overrides(overrides))
        if target is not None and (target / "best" / "checkpoint.json").is_file():
            saved = load_checkpoint(target / "best")
            member.learner, member.features = saved.learner, saved.features
        else:
            member_seed = member_seed_of(seed, m)
            log.info("implicit run: training ensemble member %d of %d (seed %d)", m + 1, members, member_seed)
            member.fit(split, member_seed, progress=progress)
            if target is not None:
                with atomic_dir(target) as tmp:
                    own = replace(config, train=TrainConfig(seed=member_seed),
                                  implicit=replace(config.implicit, seed=member_seed))
                    write_implicit_run(_fitted_run(member, own, dataset, split, benchmark, member_seed), tmp)
        others.append(member)
    ensemble = ImplicitEnsembleMethod(benchmark, members, checked_overrides(overrides))
    ensemble.adopt([first, *others], split, seed)
    ensemble.history = list(first.history)  # the run's metrics.jsonl: the first member's epochs
    ensemble.chosen = {**first.chosen, "content_weight": ensemble.content_weight, "ensemble_members": members}
    return ensemble


def _fitted_run(method: ImplicitMetaMethod, config: RunConfig, dataset: RatingDataset, split: ColdStartSplit,
                benchmark: ImplicitBenchmarkConfig, seed: int, **extra_state: Any) -> ImplicitRun:
    """A fitted method (the run's model, or one ensemble member) as a run: its selected epoch, its validation
    score and the new items' order, in the checkpoint's state (with ``extra_state``)."""
    score, points = validation_score(method.score, split, benchmark.selection(seed))
    metric = benchmark.selection_metric
    best_epoch = int(method.chosen.get("best_epoch", -1))
    state = {"epoch": len(method.history), "best_epoch": best_epoch, "best_val_score": score, "selection": metric,
             "best_val": {f"val_{metric}" if p == "all" else f"val_{p}_{metric}": v for p, v in points.items()},
             "data": data_sizes(split), "feedback": "implicit",
             "new_item_order": {"content_weight": float(method.content_weight)}, **extra_state}
    assert method.learner is not None and method.features is not None  # fitted
    checkpoint = Checkpoint(method.learner, method.features, dataset.user_vocab, dataset.item_vocab,
                            method.model_config, dataset.rating_scale, config.to_dict(), state)
    return ImplicitRun(config, checkpoint, [dict(r) for r in method.history], best_epoch, score, metric)


def _run_folder(out: Path, config: RunConfig, dataset: RatingDataset, split: ColdStartSplit,
                method: ImplicitMetaMethod, metric: str, resume: bool) -> tuple[Checkpointer, ImplicitResume | None]:
    """The per-epoch writer of :func:`train_implicit_run`'s ``run_dir`` and, when resuming, where the run
    stands (checked against what is given: a different config or data would not continue the same run)."""
    sizes = data_sizes(split)
    resumed = None
    if resume:
        saved = RunConfig.from_toml(out / "config.toml")
        if saved != config:
            differ = [k for k, v in config.to_dict().items() if saved.to_dict().get(k) != v]
            raise MetarecError(f"{out}: the run's config.toml differs from the run being resumed in {differ}")
        last = load_checkpoint(out / "last")
        if dict(last.state.get("data", {})) != sizes:
            raise MetarecError(f"{out}: the data differ from the run's ({last.state.get('data')} then, {sizes} now)")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()] if (out / "metrics.jsonl").exists() else []
        state = ImplicitTrainState.from_dict(last.state, records)
        best = load_checkpoint(out / "best").learner.named_meta_parameters() if state.best_epoch >= 0 else None
        resumed = ImplicitResume(state, last.learner, best)
        log.info("implicit run: resumed %s after epoch %d (best epoch %d)", out, state.epoch - 1, state.best_epoch)
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.toml", config.to_toml())

    def save(state: ImplicitTrainState, improved: bool) -> None:
        assert method.learner is not None and method.features is not None  # fit builds them before training
        checkpoint = Checkpoint(method.learner, method.features, dataset.user_vocab, dataset.item_vocab,
                                method.model_config, dataset.rating_scale, config.to_dict(),
                                {**state.to_dict(), "selection": metric, "data": sizes, "feedback": "implicit"})
        if improved:  # before last/: a resumed run finds its best epoch's parameters wherever it stopped
            save_checkpoint(checkpoint, out / "best", with_optimizer=False)
        write_text(out / "metrics.jsonl", _jsonl(state.history))
        save_checkpoint(checkpoint, out / "last")

    return save, resumed


def _jsonl(records) -> str:
    return "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in records)


def write_implicit_run(run: ImplicitRun, out: str | Path) -> Path:
    """``out`` as a run folder: ``config.toml``, ``metrics.jsonl`` (one line per epoch), ``best/`` (the
    selected epoch's checkpoint, with the new items' order) and ``MODEL_CARD.md`` (``last/``, written during
    training by :func:`train_implicit_run`'s ``run_dir``, is left as it is)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", run.config.to_toml())
    write_text(out / "metrics.jsonl", _jsonl(run.history))
    save_checkpoint(run.checkpoint, out / "best", with_optimizer=False)
    write_model_card(out, checkpoint_card(run.checkpoint, versions=package_versions()))
    return out
