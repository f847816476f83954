"""Meta-training: epochs over meta-train users, validation users for early stopping and model selection.

Determinism: the batch order of epoch ``e`` and any dropout noise depend only on (seed, e), so a run
resumed from its last checkpoint makes exactly the updates an uninterrupted run makes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from metarec._io import jsonable, write_text
from metarec.data.dataset import RatingDataset
from metarec.data.loaders.registry import load_data
from metarec.errors import MetarecError
from metarec.meta import distributed
from metarec.meta.checkpoint import Checkpoint, load_checkpoint, package_versions, save_checkpoint
from metarec.meta.learner import MetaLearner
from metarec.meta.model_card import checkpoint_card, data_sizes, write_model_card
from metarec.meta.predict import evaluate
from metarec.meta.run import RunConfig
from metarec.models.config import build_model
from metarec.tasks.features import encode_features
from metarec.tasks.selection import validation_curve
from metarec.tasks import HISTORY_AS_PRIOR, HISTORY_MAX_NEW_SUPPORT, ColdStartSplit, make_split
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_mae: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None


def validation_mae(learner: MetaLearner, split: ColdStartSplit, batch_size: int = 512,
                   adapted: bool = True, support_sizes: tuple[int, ...] = ()) -> dict[str, float]:
    """MAE per validation scenario and over all validation query ratings (``val_mae``, the selection
    metric); ``adapted=False``: of the predictions without adaptation (no step, no support set seen).

    ``support_sizes`` (the ``k-curve`` selection): ``val_mae`` becomes
    :func:`metarec.tasks.selection.validation_score` - the mean over the whole support and K support
    ratings for each K of the validation scenarios' mean MAE - with each point as ``val_k{K}_mae`` and the
    whole-support one as ``val_all_mae``; a model is then chosen for what a newcomer's first ratings give
    as much as for what a long history gives."""
    out = _validation_scores(learner, split.validation, batch_size, adapted)
    if not support_sizes or not adapted:
        return out
    curve = validation_curve(lambda tasks: learner.evaluate(tasks, batch_size=batch_size)["mae"], split, support_sizes)
    out.update({f"val_{name}_mae": value for name, value in curve.items()})
    out["val_mae"] = float(np.mean([v for v in curve.values() if v == v]))
    return out


def _validation_scores(learner: MetaLearner, validation, batch_size: int, adapted: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    total_abs = total_n = 0.0
    for name, tasks in validation.items():
        if not len(tasks):
            continue
        m = (learner.evaluate(tasks, batch_size=batch_size) if adapted else
             learner.evaluate(without_support(tasks, learner), 0, batch_size=batch_size))
        out[f"val_{name}_mae"] = m["mae"]
        out[f"val_{name}_rmse"] = m["rmse"]
        total_abs += m["mae"] * m["n"]
        total_n += m["n"]
    out["val_mae"] = total_abs / total_n if total_n else float("nan")
    return out


def meta_parameters(learner: MetaLearner) -> dict[str, torch.Tensor]:
    """A detached copy of the learner's meta-parameters (an epoch's selected state)."""
    return {n: p.detach().clone() for n, p in learner.named_meta_parameters().items()}


def load_meta_parameters(learner: MetaLearner, params: dict[str, torch.Tensor]) -> MetaLearner:
    """Put a copy taken by :func:`meta_parameters` back into the learner, in place."""
    named = learner.named_meta_parameters()
    with torch.no_grad():
        for n, value in params.items():
            named[n].copy_(value)
    return learner


@contextmanager
def parameters_swapped_in(learner: MetaLearner, params: dict[str, torch.Tensor] | None
                          ) -> Iterator[dict[str, torch.Tensor] | None]:
    """Within the block the learner holds ``params``; its own come back afterwards, even on an error.
    Yields a copy of its own (None, and nothing is swapped, when ``params`` is None)."""
    if params is None:
        yield None
        return
    kept = meta_parameters(learner)
    load_meta_parameters(learner, params)
    try:
        yield kept
    finally:
        load_meta_parameters(learner, kept)


class Trainer:
    """Builds the split, features, model and learner of a :class:`RunConfig` and meta-trains it."""

    def __init__(self, config: RunConfig, *, split: ColdStartSplit | None = None, dataset: RatingDataset | None = None,
                 run_dir: str | Path | None = None, progress: Progress | None = None,
                 select_unadapted: bool = False) -> None:
        """``select_unadapted``: also keep the epoch whose predictions *without adaptation* are best on
        validation users (``best_unadapted_params``), for a model that is used both ways (the global
        baseline); early stopping then waits until neither validation MAE has improved for ``patience``
        epochs, so each use gets its own best epoch (the adapted one usually bottoms out first). With
        ``train.average_decay`` the unadapted use is scored and kept on the raw parameters: it is plain
        supervised training, and on ML-1M's validation users the average was worse for it."""
        self.config = config
        self.select_unadapted = select_unadapted
        if split is None:
            dataset = dataset or load_data(config.data)
            split = make_split(dataset, config.split)
        self.split = split
        self.dataset = split.dataset
        self.run_dir = None if run_dir is None else Path(run_dir)
        # under torchrun: this rank's share of every meta-batch (metarec.meta.distributed); rank 0 alone
        # writes and reports progress
        self.dist = distributed.join(config.train.device)
        self.writes = self.dist is None or self.dist.is_main
        self.progress = progress if self.writes else None
        self.device = torch.device(config.train.device) if self.dist is None else self.dist.device
        self.features = encode_features(split).to(self.device)
        model = build_model(config.model, self.features.user_encoder, self.features.item_encoder,
                            self.features.item_features, known_items=self.features.known_items,
                            rating_scale=self.dataset.rating_scale, seed=config.train.seed).to(self.device)
        self.learner = MetaLearner(model, config.meta, self.features.user_features)
        if self.dist is not None:  # the same config and data on every rank, or a one-line error
            self.dist.check_run(self.config.to_dict(), self.split, self.learner)
        # "data": the sizes the model card reports, kept in every checkpoint so a saved model can tell them
        self.state: dict = {"epoch": 0, "best_epoch": -1, "best_val_mae": float("inf"), "bad_epochs": 0,
                            "data": data_sizes(split)}
        self.history: list[dict] = []
        self.best_params: dict[str, torch.Tensor] | None = None  # in memory, for runs without a folder
        self.best_unadapted_params: dict[str, torch.Tensor] | None = None  # with select_unadapted
        self.average: dict[str, torch.Tensor] | None = None  # running average (train.average_decay > 0)
        self.average_decay = self._average_decay()
        # the K-curve selection's support sizes (empty: select on the whole-support validation MAE)
        self.selection_support_sizes = config.train.selection_support_sizes if config.train.select_on == "k-curve" else ()

    def restore_best(self) -> MetaLearner:
        """Put the best validation epoch's parameters back into the learner (no-op before any epoch)."""
        if self.best_params is not None:
            load_meta_parameters(self.learner, self.best_params)
        return self.learner

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.learner, self.features, self.dataset.user_vocab, self.dataset.item_vocab,
                          self.config.model, self.dataset.rating_scale, self.config.to_dict(), dict(self.state),
                          average=self.average)

    def _save(self, name: str) -> None:
        if self.run_dir is not None and self.writes:
            save_checkpoint(self.checkpoint(), self.run_dir / name, with_optimizer=(name == "last"))

    def write_run(self, run_dir: str | Path) -> Path:
        """Make ``run_dir`` the run folder of this (already fitted, in memory) training, as if it had been
        trained there: ``config.toml``, ``metrics.jsonl``, ``best`` (the selected epoch) and ``last`` (the
        state to resume from). The automatic recipe trains its candidates in memory and keeps the chosen
        one this way, instead of training it a second time."""
        self.run_dir = Path(run_dir)
        if not self.writes:
            return self.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.toml", self.config.to_toml())
        write_text(self.run_dir / "metrics.jsonl", "".join(_json_line(r) for r in self.history))
        if self.best_params is not None:
            with parameters_swapped_in(self.learner, self.best_params):
                self._save("best")
        self._save("last")
        self.write_card()
        return self.run_dir

    def write_card(self) -> None:
        """RUNDIR/MODEL_CARD.md (:mod:`metarec.meta.model_card`) for the run as it stands."""
        if self.run_dir is not None and self.writes:
            write_model_card(self.run_dir, checkpoint_card(self.checkpoint(), versions=package_versions()))

    def resume(self, directory: str | Path) -> None:
        """Continue from a ``last`` checkpoint: parameters, optimiser moments, epoch and best-so-far."""
        ckpt = load_checkpoint(directory, device=self.device)
        self.learner.load_training_state(ckpt.learner)
        self.state = dict(ckpt.state)
        self.state.setdefault("data", data_sizes(self.split))
        self.average = ({n: v.clone() for n, v in ckpt.average.items()}
                        if self.average_decay and ckpt.average is not None else None)
        if self.dist is not None:  # every rank loaded the same checkpoint, before rank 0 writes a new one
            self.dist.check_parameters(self.learner, f"resumed at epoch {self.state['epoch']}")
        if self.run_dir is not None and self.writes and (self.run_dir / "metrics.jsonl").exists():
            # the records up to the checkpoint's epoch (a run killed after logging an epoch it never saved
            # logs that epoch again): the file is rewritten to them, so every epoch appears once
            lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(x) for x in lines if x.strip()]
            self.history = [r for r in records if r.get("epoch", -1) < self.state["epoch"]]
            write_text(self.run_dir / "metrics.jsonl", "".join(_json_line(r) for r in self.history))

    # ------------------------------------------------------------------ training
    def fit(self, *, max_epochs: int | None = None) -> TrainResult:
        """Meta-train until ``train.epochs`` or early stopping; ``max_epochs`` stops early (for tests of resume).
        ``train.threads`` holds while it trains; the caller's torch thread count is restored after (a library
        call does not change its process for good: the command line sets it for the whole command)."""
        previous = torch.get_num_threads()
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        try:
            return self._fit(max_epochs)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, max_epochs: int | None) -> TrainResult:
        cfg = self.config.train
        if self.run_dir is not None and self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.toml", self.config.to_toml())
        tasks: TaskSet = self.split.meta_train
        n_batches = -(-len(tasks) // self.config.meta.meta_batch_size)
        stop_at = cfg.epochs if max_epochs is None else min(cfg.epochs, self.state["epoch"] + max_epochs)
        if self.state["epoch"] == 0 and cfg.pretrain_epochs and not self.state.get("pretrained"):
            self._pretrain()
        if self.state["epoch"] == 0 and self.run_dir is not None:
            self.history = [self._record(-1, float("nan"), 0.0)]  # the initialisation, for learning curves
        if self.average_decay and self.average is None:
            self.average = meta_parameters(self.learner)
        while self.state["epoch"] < stop_at and self.state["bad_epochs"] < cfg.patience:
            epoch = self.state["epoch"]
            rng = np.random.default_rng([cfg.seed, epoch])
            torch.manual_seed(cfg.seed * 100003 + epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            start = time.perf_counter()
            losses = []
            epoch_tasks = tasks.with_resampled_query(np.random.default_rng([cfg.seed, epoch, 1])) if cfg.resample_query else tasks
            if cfg.short_support_fraction > 0:
                epoch_tasks = epoch_tasks.with_short_supports(np.random.default_rng([cfg.seed, epoch, 2]),
                                                              cfg.short_support_fraction, cfg.short_support_max)
            for i, batch in enumerate(epoch_tasks.batches(self.config.meta.meta_batch_size, shuffle=True, generator=rng)):
                losses.append(self._meta_step(self.learner, batch.to(self.device), gen))
                self._update_average()
                if self.progress:
                    self.progress("train", i + 1, n_batches)
            if self.dist is not None:
                self.dist.check_parameters(self.learner, f"epoch {epoch}")
            raw_unadapted = self._on_main(self._unadapted_mae) if self.select_unadapted else None
            # validation, selection and "best" see the average; training goes on from the raw parameters
            with parameters_swapped_in(self.learner, self.average) as raw:
                record = self._record(epoch, float(np.mean(losses)) if losses else float("nan"),
                                      time.perf_counter() - start, raw_unadapted)
                self.state["epoch"] = epoch + 1
                improved = record["val_mae"] < self.state["best_val_mae"] - 1e-6
                if improved:
                    self.state.update(best_epoch=epoch, best_val_mae=record["val_mae"], bad_epochs=0,
                                      best_val={k: v for k, v in record.items() if k.startswith("val_")})
                    self.best_params = meta_parameters(self.learner)
                    self._save("best")
                else:
                    self.state["bad_epochs"] += 1
                if self.select_unadapted and record["val_unadapted_mae"] < self.state.get("best_unadapted_val_mae", math.inf) - 1e-6:
                    self.state.update(best_unadapted_epoch=epoch, best_unadapted_val_mae=record["val_unadapted_mae"])
                    self.best_unadapted_params = raw if raw is not None else meta_parameters(self.learner)
                    self.state["bad_epochs"] = 0  # patience runs out only when neither use improves
            if self.progress:
                self.progress("epoch", epoch + 1, cfg.epochs)
            if self.run_dir is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or improved):
                self._save("last")
        if self.run_dir is not None:
            self._save("last")
            self.write_card()
        return TrainResult(self.state["best_epoch"], self.state["best_val_mae"], self.state["epoch"], self.history, self.run_dir)

    def _average_decay(self) -> float:
        """The running average's decay: ``train.average_decay``, or from ``train.average_epochs`` and the
        number of meta-batches per epoch."""
        cfg = self.config.train
        if not cfg.average_epochs:
            return cfg.average_decay
        n_batches = max(1, -(-len(self.split.meta_train) // self.config.meta.meta_batch_size))
        return 1.0 - 1.0 / (cfg.average_epochs * n_batches)

    def _update_average(self) -> None:
        """``avg <- d * avg + (1 - d) * phi`` after a meta-step (no-op unless ``train.average_decay`` > 0)."""
        if self.average is None:  # set only when train.average_decay > 0
            return
        with torch.no_grad():
            for n, p in self.learner.named_meta_parameters().items():
                self.average[n].lerp_(p.detach(), 1.0 - self.average_decay)

    def _pretrain(self) -> None:
        """Plain supervised epochs over all meta-train ratings (no inner loop) on the same parameters."""
        cfg = self.config.train
        plain_config = replace(self.config.meta, algorithm="fomaml", inner_steps=0, support_batch_size=None)
        plain = MetaLearner(self.learner.model, plain_config, self.features.user_features)
        tasks = self.split.meta_train.as_whole_query()
        for epoch in range(cfg.pretrain_epochs):
            rng = np.random.default_rng([cfg.seed, 1_000_000 + epoch])
            torch.manual_seed(cfg.seed * 100003 + 1_000_000 + epoch)
            for batch in tasks.batches(self.config.meta.meta_batch_size, shuffle=True, generator=rng):
                self._meta_step(plain, batch.to(self.device), None)
            if self.progress:
                self.progress("pretrain", epoch + 1, cfg.pretrain_epochs)
        self.state["pretrained"] = True
        log.info("pretrained %d epochs as a global model", cfg.pretrain_epochs)

    def _meta_step(self, learner: MetaLearner, batch, generator: torch.Generator | None) -> float:
        """One outer update: the learner's own, or (distributed) from this rank's share of ``batch``."""
        if self.dist is None:
            return learner.meta_step(batch, generator=generator)
        return self.dist.meta_step(learner, batch, generator)

    def _on_main(self, compute: Callable[[], object]):
        """``compute()`` here, or (distributed) on rank 0 with the result broadcast to every rank."""
        return compute() if self.dist is None else self.dist.on_main(compute)

    def _unadapted_mae(self) -> float:
        return validation_mae(self.learner, self.split, self.config.train.eval_batch_size, adapted=False)["val_mae"]

    def _record(self, epoch: int, train_loss: float, seconds: float, unadapted_mae: float | None = None) -> dict:
        """Validation metrics of the parameters now in the learner; ``unadapted_mae`` (select_unadapted)
        when it was measured on other parameters (the raw ones, while the average is in)."""
        def measure() -> dict:
            record = {"epoch": epoch, "train_loss": train_loss, "seconds": round(seconds, 3),
                      **validation_mae(self.learner, self.split, self.config.train.eval_batch_size,
                                       support_sizes=self.selection_support_sizes)}
            if self.select_unadapted:
                record["val_unadapted_mae"] = self._unadapted_mae() if unadapted_mae is None else unadapted_mae
            return record

        record = self._on_main(measure)  # distributed: rank 0's, so every rank selects and stops alike
        self.history.append(record) if epoch >= 0 else None
        if self.run_dir is not None and self.writes:
            with open(self.run_dir / "metrics.jsonl", "a" if epoch >= 0 else "w", encoding="utf-8") as fh:
                fh.write(_json_line(record))
        log.info("epoch %d: train loss %.4f, validation MAE %.4f", epoch, train_loss, record["val_mae"])
        return record


def load_best(run_dir: str | Path, device: str = "cpu") -> Checkpoint:
    """The checkpoint selected on validation users (``best``), else the last one."""
    run_dir = Path(run_dir)
    for name in ("best", "last"):
        if (run_dir / name / "checkpoint.json").exists():
            return load_checkpoint(run_dir / name, device=device)
    raise MetarecError(f"{run_dir}: no checkpoint found (expected {run_dir}/best or {run_dir}/last)")


def without_support(tasks: TaskSet, learner: MetaLearner) -> TaskSet:
    """The tasks as the model sees them without adaptation: a model that reads the support set directly
    (attention, closed-form fold-in) must not see it either, or "no adaptation" would still adapt."""
    if not learner.model.uses_context:
        return tasks
    return tasks.with_support(np.zeros(len(tasks.support_item), dtype=bool))


def evaluate_run(ckpt: Checkpoint, split: ColdStartSplit, steps: int | None = None, *, user_history: bool = True,
                 history_max_new_support: int | None = HISTORY_MAX_NEW_SUPPORT,
                 history_as_prior: bool = HISTORY_AS_PRIOR,
                 progress: Progress | None = None, members: Sequence[Checkpoint] = ()) -> dict[str, dict[str, float]]:
    """MAE / RMSE per test scenario, adapted and not adapted (an ensemble's ``members``: their mean). ``user_history``: a meta-train user's task
    adapts on their meta-train ratings too, by the benchmark's rule (``BenchmarkConfig.user_history``,
    ``history_max_new_support`` and ``history_as_prior``). ``progress(scenario, done, total)`` after each
    scenario: scoring takes seconds, and a caller may show it."""
    out = {}
    for i, (name, tasks) in enumerate(split.test.items()):
        if progress:
            progress(name, i, len(split.test))
        if user_history:
            tasks_seen = split.with_user_history(tasks, history_max_new_support, history_as_prior)
        else:
            tasks_seen = tasks
        adapted = evaluate(ckpt.learner, tasks_seen, steps, others=[m.learner for m in members])
        frozen = evaluate(ckpt.learner, without_support(tasks, ckpt.learner), 0, others=[m.learner for m in members])
        out[name] = {"mae": adapted["mae"], "rmse": adapted["rmse"], "mae_no_adapt": frozen["mae"],
                     "rmse_no_adapt": frozen["rmse"], "ratings": adapted["n"], "tasks": len(tasks)}
    if progress:
        progress("done", len(split.test), len(split.test))
    return out


def _json_line(record: dict) -> str:
    """One metrics.jsonl line: strict JSON (a NaN, such as the initialisation's train loss, is null)."""
    return json.dumps(jsonable(record), allow_nan=False) + "\n"
