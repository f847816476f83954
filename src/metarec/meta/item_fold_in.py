"""Item-side fold-in: items released after meta-training, learnt from the ratings users give them.

Why: a new item's vector comes from its attributes alone, and attributes explain little of how an item
is rated (on ML-1M new items, the best attribute-only models are ~0.2 MAE behind the same models on
warm items). Once a few users have rated it, those ratings say more. For a model that is linear in the
item vector (NeuralCF: ``score(v) = q_v . w_u + b_v + c_u``), the item's offset ``delta_v`` to
``[q_v, b_v]`` given the raters' adapted ``(w_u, c_u)`` is a ridge regression with a closed form - the
item-side mirror of the user fold-in inside the model - alternated with the users' fold-in a few times,
as one ALS sweep of matrix factorisation restricted to the new items would be.

The ridge prior is empirical Bayes from training: the item-id part of a warm item's vector (its vector
minus the attribute-only one) has a variance ``s_j^2`` per coordinate, so the penalty on ``delta_v``'s
coordinate ``j`` is ``scale * sigma^2 / s_j^2`` with ``sigma^2`` a rating-noise variance; ``scale`` is
chosen on validation users (see ``metarec.eval.benchmark``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from metarec.errors import MetarecError
from metarec.linalg import pooled_item_ridge
from metarec.meta.learner import MetaLearner
from metarec.tasks.taskset import TaskSet, new_item_rows


def supports_item_fold_in(learner: MetaLearner) -> bool:
    """Whether the learner's model is linear in an item vector it can offset (NeuralCF), and that vector
    is shared by every task (nothing on the item side adapts per user, as it does under Reptile)."""
    model = learner.model
    return learner.hoist and model.linear_in_item


def item_prior_variance(learner: MetaLearner, floor: float = 1e-4) -> np.ndarray:
    """``s_j^2``: per coordinate of ``[q_v, b_v]``, the mean square of what warm items' ids add to their
    attribute-only vectors - how far a real item strays from what its attributes predict. Without item
    ids (nothing to measure), the variance of the attribute vectors themselves."""
    model = learner.model
    known = getattr(model, "item_known", None)
    offset, model.item_offset = model.item_offset, None
    try:
        items = torch.arange(model.n_items, device=_device(model))
        with torch.no_grad():
            full = learner.catalogue_vectors(items)
            if known is None or not bool(known.any()):
                return np.maximum(full.var(0).double().cpu().numpy(), floor)
            saved = known.clone()
            known.zero_()
            try:
                attributes_only = learner.catalogue_vectors(items)
            finally:
                known.copy_(saved)
        warm = saved > 0
        return np.maximum(((full - attributes_only)[warm] ** 2).mean(0).double().cpu().numpy(), floor)
    finally:
        model.item_offset = offset


def task_user_weights(learner: MetaLearner, tasks: TaskSet, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every task's adapted ``(w [T, F], c [T])`` (float64), batched as :meth:`MetaLearner.predict_tasks` is."""
    w_out = np.zeros((len(tasks), learner.model.factors))
    c_out = np.zeros(len(tasks))
    learner.model.eval()
    for idx, batch in learner.task_batches(tasks):
        adapted, task = learner.adapt(batch, steps)
        w, c = learner.user_weights(adapted, task)
        w_out[idx], c_out[idx] = w.double().cpu().numpy(), c.double().cpu().numpy()
    return w_out, c_out


def fold_in_items(learner: MetaLearner, tasks: TaskSet, known_items: np.ndarray, penalty: np.ndarray,
                  steps: int | None = None, rounds: int = 3) -> torch.Tensor:
    """``[n_items, F + 1]`` item offsets: zero for items training saw (``known_items``) and for new items no
    task's support set rates; for the others, the ridge solution (``penalty`` per coordinate) of their
    pooled support ratings on the raters' adapted ``[w_u, 1]``, alternated ``rounds`` times with the
    tasks' own fold-in. The model's offsets are left as they were."""
    if not supports_item_fold_in(learner):
        raise MetarecError(f"{type(learner.model).__name__} is not linear in an item vector: no item fold-in")
    model = learner.model
    task, item, rating = new_item_rows(tasks, known_items)
    param = next(model.parameters())
    offsets = torch.zeros(len(known_items), model.factors + 1, dtype=param.dtype, device=param.device)
    rows = np.unique(item)
    if not len(rows):
        return offsets
    local = np.searchsorted(rows, item)
    previous = model.item_offset
    try:
        base = attribute_vectors(learner, rows)
        q, b = base[:, : model.factors], base[:, model.factors]
        for _ in range(rounds):
            w, c = task_user_weights(learner, tasks, steps)
            residual = prior_residual(rating, q[local], b[local], w[task], c[task])
            _, delta = pooled_item_ridge(task, item, residual, np.c_[w, np.ones(len(tasks))], penalty)
            offsets[torch.as_tensor(rows, device=offsets.device)] = torch.as_tensor(delta, dtype=offsets.dtype,
                                                                                    device=offsets.device)
            model.item_offset = offsets
    finally:
        model.item_offset = previous
    return offsets


def attribute_vectors(learner: MetaLearner, items: np.ndarray) -> np.ndarray:
    """``[len(items), F + 1]`` (float64): the items' ``[q_v, b_v]`` with no folded-in offset - for an item
    training never saw, what its attributes predict, the prior its fold-in is centred on."""
    model = learner.model
    previous, model.item_offset = model.item_offset, None
    try:
        with torch.no_grad():
            return learner.catalogue_vectors(torch.as_tensor(items, device=_device(model))).double().cpu().numpy()
    finally:
        model.item_offset = previous


def prior_residual(rating: np.ndarray, q: np.ndarray, b: np.ndarray, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """What each rating says beyond the prior score ``q . w + b + c`` (rows aligned: one rating, its item's
    ``q`` / ``b``, its rater's ``w`` / ``c``): the target of the item-side ridge regression on ``[w, 1]``."""
    return rating - np.einsum("nf,nf->n", q, w) - b - c


def rating_statistics(w: np.ndarray, c: np.ndarray, prior: np.ndarray, rating: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One item's sufficient statistics from its raters' adapted ``(w [n, F], c [n])`` and their ``rating``
    [n], around its ``prior`` ``[q_v, b_v]``: the Gram matrix ``Z^T Z`` and ``Z^T r`` of the design
    ``Z = [w, 1]`` and residuals ``r`` (:func:`prior_residual`). Raters arriving in several calls add up;
    :func:`metarec.linalg.solve_ridge` of the sums is the item's offset, as :func:`fold_in_items` solves it."""
    w = np.asarray(w, dtype=np.float64)
    factors = w.shape[1]
    n = len(w)
    residual = prior_residual(np.asarray(rating, dtype=np.float64), np.broadcast_to(prior[:factors], w.shape),
                              np.full(n, prior[factors]), w, np.asarray(c, dtype=np.float64))
    design = np.c_[w, np.ones(n)]
    return design.T @ design, design.T @ residual


@contextmanager
def new_items_folded_in(learner: MetaLearner, tasks: TaskSet, known_items: np.ndarray, penalty: np.ndarray,
                        steps: int | None = None) -> Iterator[None]:
    """Within the block, the model scores new items with their offsets from ``tasks``' support sets
    (:func:`fold_in_items`); afterwards, as before."""
    offsets = fold_in_items(learner, tasks, known_items, penalty, steps)
    previous, learner.model.item_offset = learner.model.item_offset, offsets
    try:
        yield
    finally:
        learner.model.item_offset = previous


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device

