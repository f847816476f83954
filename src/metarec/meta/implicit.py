"""Meta-training on implicit feedback (plays, clicks): every epoch each meta-train task's query gets fresh
sampled negatives, the outer loss ranks its positives above them (``MetaConfig.query_loss``: bce, bpr or
softmax), and early stopping follows a ranking score of validation users that the caller supplies.

The same :class:`~metarec.meta.learner.MetaLearner` and the same maths as for ratings; what changes is
the data each meta-batch carries (positives with their confidence, sampled negatives at 0) and the loss.
A task's rating is the interaction's confidence (>= 1, :func:`metarec.data.implicit.to_implicit`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import torch

from metarec.errors import ConfigError
from metarec.meta.learner import MetaLearner
from metarec.meta.predict import task_batches
from metarec.tasks.negatives import with_negatives
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ImplicitTrainConfig:
    """The outer loop's schedule on implicit feedback.

    ``query_negatives``: sampled negatives per query positive (drawn anew each epoch, never an item of the
    task); ``support_negatives``: the same for the support set, which only gradient steps of the inner loop
    use (the closed-form fold-in already weighs every unobserved item). ``sampling``: uniform over the
    training items, or proportional to training popularity ** ``popularity_power`` (harder negatives).
    ``short_support_fraction`` / ``short_support_max``: as for ratings, the support of that fraction of
    tasks is cut each epoch to K drawn log-uniformly from 1..max, the rest joining the query, so the outer
    loss sees what a newcomer's first interactions give."""

    epochs: int = 30
    patience: int = 4
    seed: int = 0
    query_negatives: float = 4.0
    support_negatives: float = 0.0
    sampling: Literal["uniform", "popularity"] = "uniform"
    popularity_power: float = 0.75
    resample_query: bool = True
    short_support_fraction: float = 0.5
    short_support_max: int = 20
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.patience < 1:
            raise ConfigError("epochs must be >= 0 and patience >= 1")
        if self.query_negatives <= 0 or self.support_negatives < 0:
            raise ConfigError("query_negatives must be > 0 and support_negatives >= 0")
        if self.sampling not in ("uniform", "popularity"):
            raise ConfigError(f"sampling must be 'uniform' or 'popularity', got {self.sampling!r}")
        if not 0.0 <= self.short_support_fraction <= 1.0 or self.short_support_max < 1:
            raise ConfigError("short_support_fraction must be in [0, 1] and short_support_max >= 1")


@dataclass(frozen=True)
class ImplicitTrainState:
    """Where an implicit run stands after ``epoch`` epochs: with the learner (parameters and Adam moments)
    and the best epoch's parameters, enough to continue it exactly (every epoch's draws are seeded by the
    run's seed and the epoch's number alone). ``bad``: epochs since the best one."""

    epoch: int
    best_epoch: int
    best_score: float
    bad: int
    history: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        """The JSON-able fields a checkpoint's state keeps (the history goes to metrics.jsonl)."""
        return {"epoch": self.epoch, "best_epoch": self.best_epoch,
                "best_val_score": self.best_score if math.isfinite(self.best_score) else None,
                "epochs_without_improvement": self.bad}

    @classmethod
    def from_dict(cls, state: Mapping[str, object], history: Sequence[dict]) -> "ImplicitTrainState":
        """The state :meth:`to_dict` wrote, with the run's epoch records up to its epoch."""
        epoch = int(state["epoch"])  # type: ignore[arg-type]
        score = state.get("best_val_score")
        return cls(epoch, int(state["best_epoch"]), -math.inf if score is None else float(score),  # type: ignore[arg-type]
                   int(state["epochs_without_improvement"]),  # type: ignore[arg-type]
                   tuple(dict(r) for r in history if int(r.get("epoch", -1)) < epoch))


Checkpointer = Callable[[ImplicitTrainState, bool], None]  # after each epoch: (state, whether it is the best)


@dataclass(frozen=True)
class ImplicitResume:
    """A run to continue: its ``state``, the learner of its last epoch (``last``: parameters and Adam
    moments, e.g. a checkpoint's) and its best epoch's parameters (None before a best epoch)."""

    state: ImplicitTrainState
    last: MetaLearner
    best_params: Mapping[str, torch.Tensor] | None


@dataclass
class ImplicitTrainResult:
    best_epoch: int
    best_score: float
    epochs: int
    history: list[dict]
    best_params: dict[str, torch.Tensor] | None


def epoch_tasks(tasks: TaskSet, n_items: int, config: ImplicitTrainConfig, epoch: int,
                candidates: np.ndarray | None, popularity: np.ndarray | None) -> TaskSet:
    """One epoch's meta-train tasks: support / query redrawn, short supports, then sampled negatives."""
    seed = config.seed
    out = tasks.with_resampled_query(np.random.default_rng([seed, epoch, 1])) if config.resample_query else tasks
    if config.short_support_fraction > 0:
        out = out.with_short_supports(np.random.default_rng([seed, epoch, 2]), config.short_support_fraction,
                                      config.short_support_max)
    weights = None
    if config.sampling == "popularity" and popularity is not None:
        weights = np.asarray(popularity, dtype=np.float64) ** config.popularity_power
    return with_negatives(out, n_items, np.random.default_rng([seed, epoch, 3]), query_ratio=config.query_negatives,
                          support_ratio=config.support_negatives, popularity=weights, candidates=candidates)


def train_implicit(learner: MetaLearner, tasks: TaskSet, n_items: int, config: ImplicitTrainConfig,
                   validate: Callable[[MetaLearner], float], *, candidates: np.ndarray | None = None,
                   popularity: np.ndarray | None = None, progress: Progress | None = None,
                   on_epoch: Callable[[dict], None] | None = None, checkpoint: Checkpointer | None = None,
                   start: ImplicitTrainState | None = None,
                   best_params: Mapping[str, torch.Tensor] | None = None) -> ImplicitTrainResult:
    """Meta-train ``learner`` on ``tasks`` (positives only); keep the epoch whose ``validate`` score (higher is
    better, e.g. validation users' nDCG@20) is best, and stop after ``patience`` epochs without a better one.
    ``candidates``: the items negatives are drawn from (bool [n_items]; the training items). ``on_epoch``
    sees each epoch's record (epoch, train_loss, val_score, seconds) as it ends, after ``checkpoint`` has
    seen the run's state (write it there to resume later). ``start``: continue a run from that state, the
    learner already holding its parameters and Adam moments, ``best_params`` its best epoch's parameters."""
    device = next(learner.model.parameters()).device
    batch_size = learner.config.meta_batch_size
    history: list[dict] = [] if start is None else [dict(r) for r in start.history]
    best = (-1, -math.inf, None) if start is None else (
        start.best_epoch, start.best_score,
        None if best_params is None else {n: v.detach().clone() for n, v in best_params.items()})
    if start is not None and start.best_epoch >= 0 and best_params is None:
        raise ValueError("resuming after a best epoch needs that epoch's parameters (best_params)")
    bad = 0 if start is None else start.bad
    first = 0 if start is None else start.epoch
    for epoch in range(first, config.epochs):
        if bad >= config.patience:  # a run resumed after it had stopped early
            break
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        torch.manual_seed(config.seed * 100003 + epoch)
        rng = np.random.default_rng([config.seed, epoch])
        learner.model.train()
        losses = []
        current = epoch_tasks(tasks, n_items, config, epoch, candidates, popularity)
        n_batches = -(-len(current) // batch_size)
        for i, batch in enumerate(current.batches(batch_size, shuffle=True, generator=rng)):
            losses.append(learner.meta_step(batch.to(device), generator=gen))
            if progress:
                progress("train", i + 1, n_batches)
        learner.model.eval()
        score = float(validate(learner))
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                  "val_score": score, "seconds": time.perf_counter() - start}
        history.append(record)
        log.info("implicit epoch %d: loss %.4f, validation %.4f", epoch, record["train_loss"], score)
        improved = score > best[1] + 1e-6
        if improved:
            best, bad = (epoch, score, {n: p.detach().clone() for n, p in learner.named_meta_parameters().items()}), 0
        else:
            bad += 1
        if checkpoint is not None:
            checkpoint(ImplicitTrainState(epoch + 1, best[0], best[1], bad, tuple(history)), improved)
        if on_epoch is not None:
            on_epoch(dict(record, epochs=config.epochs))
        if progress:
            progress("epoch", epoch + 1, config.epochs)
        if bad >= config.patience:
            break
    if best[2] is not None:
        with torch.no_grad():
            for n, p in learner.named_meta_parameters().items():
                p.copy_(best[2][n])
    return ImplicitTrainResult(best[0], best[1], len(history), history, best[2])


def catalogue_scores(learner: MetaLearner, tasks: TaskSet, batch_size: int = 256) -> np.ndarray:
    """Scores [len(tasks), n_items] of every catalogue item for every task's user, adapted to its support
    set (the closed-form fold-in and/or the configured inner steps). Support items are not masked."""
    model = learner.model
    model.eval()
    device = next(model.parameters()).device
    items = torch.arange(model.n_items, device=device)
    out = np.empty((len(tasks), model.n_items), dtype=np.float32)
    with torch.no_grad():
        item_vec = learner.catalogue_vectors(items)
        proj = learner.catalogue_projection(item_vec)
        for idx, batch in task_batches(learner, tasks, batch_size):
            adapted, task = learner.adapt(batch)
            scores = learner.predict_items(adapted, task, items, item_vec, proj)
            out[idx] = scores.float().cpu().numpy()
    return out
