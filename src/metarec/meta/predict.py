"""A meta-learner's predictions over whole task sets: tasks batched by support length, every query rating
predicted after adapting on its task's support set (validation, evaluation, the benchmark)."""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from metarec.tasks.taskset import TaskBatch, TaskSet, rank_within


class MetaLearner(Protocol):
    """What these functions use of :class:`metarec.meta.learner.MetaLearner`."""

    model: torch.nn.Module

    def predict_query(self, batch: TaskBatch, steps: int | None = None) -> torch.Tensor: ...


def task_batches(learner: MetaLearner, tasks: TaskSet, batch_size: int = 256,
                 max_batch_ratings: int = 262_144) -> Iterator[tuple[np.ndarray, TaskBatch]]:
    """``(task indices, TaskBatch on the model's device)`` covering ``tasks`` once, in order of support
    length (a batch's tasks pad to about the same width), at most ``batch_size`` tasks and about
    ``max_batch_ratings`` support ratings per batch: a known user's history can be a support set of a
    thousand ratings."""
    n = len(tasks)
    if n == 0:
        return
    device = next(learner.model.parameters()).device
    packed = tasks.packed()
    sizes = tasks.support_sizes
    order = np.argsort(sizes, kind="stable")
    i = 0
    while i < n:
        widest = max(1, int(sizes[order[min(i + batch_size, n) - 1]]))
        idx = order[i : i + max(1, min(batch_size, max_batch_ratings // widest))]
        yield idx, packed.select(torch.as_tensor(idx, dtype=torch.long)).to(device)
        i += len(idx)


def predict_tasks(learner: MetaLearner, tasks: TaskSet, steps: int | None = None, batch_size: int = 256,
                  max_batch_ratings: int = 262_144) -> np.ndarray:
    """Every query rating's prediction after adapting on its task's support set, flat in the order of
    ``tasks.query_item`` (task by task)."""
    out = np.empty(int(tasks.query_sizes.sum()), dtype=np.float64)
    for idx, batch in task_batches(learner, tasks, batch_size, max_batch_ratings):
        pred = learner.predict_query(batch, steps)[batch.query_mask > 0].detach().cpu().numpy()
        # the rows' real query entries, row by row, are each task's query in order
        lengths = tasks.query_sizes[idx]
        out[np.repeat(tasks.query_ptr[idx], lengths) + rank_within(np.repeat(idx, lengths))] = pred
    return out


def evaluate(learner: MetaLearner, tasks: TaskSet, steps: int | None = None, batch_size: int = 256,
             others: Sequence[MetaLearner] = ()) -> dict[str, float]:
    """Query MAE / RMSE over a TaskSet, rating-weighted (every query rating counts once). ``others``: an
    ensemble's other members (:mod:`metarec.meta.ensemble`); the prediction is then the members' mean."""
    pred = predict_tasks(learner, tasks, steps, batch_size)
    if others:
        pred = np.mean([pred, *(predict_tasks(m, tasks, steps, batch_size) for m in others)], axis=0)
    if not len(pred):
        return {"mae": float("nan"), "rmse": float("nan"), "n": 0}
    err = pred - tasks.query_rating.astype(np.float64)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())), "n": int(len(err))}
