"""The same meta-learning maths as :mod:`metarec.meta.maml` and its kernels, written as a plain loop over tasks.

One task at a time, unpadded, no hoisting, ``torch.autograd.grad`` with ``create_graph`` for the
second-order terms. It is slow on purpose: it is the reference the learner (every kernel) is tested against and the
baseline the speed benchmark measures the engine against.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from metarec.meta.learner import MetaLearner
from metarec.meta.losses import masked_loss
from metarec.models.base import Context, Params
from metarec.tasks.taskset import TaskBatch


def _predict(learner: MetaLearner, params: Params, user_idx: torch.Tensor, items: torch.Tensor,
             support_items: torch.Tensor, support_ratings: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    model = learner.model
    user = learner.user_features.select(user_idx.view(1))
    single = {k: v[0] for k, v in user.single.items()}
    multi = {k: v[0] for k, v in user.multi.items()}
    # embedding_bag has no double backward: when embeddings adapt, use the equivalent masked mean.
    kw = {"vmap_safe": not learner.hoist}
    u = functional_call(model, params, ("users", single, multi), kw)
    v = functional_call(model, params, ("items", items), kw)
    context = None
    if model.uses_context:
        s = functional_call(model, params, ("items", support_items), kw)
        context = Context(s, support_ratings, torch.ones_like(support_ratings))
    return functional_call(model, params, ("score", u, v, context), {"exclude_self": exclude_self})


def reference_meta_gradients(
    learner: MetaLearner, batch: TaskBatch, step_masks: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], float]:
    """Meta-gradient of ``learner``'s meta-parameters on ``batch``, one task after another."""
    config = learner.config
    params = dict(learner.model.named_parameters())
    adapted = learner.adapted
    first_order = config.first_order
    lr = lambda name: learner.inner_lrs[name] if learner.inner_lrs else config.inner_lr  # noqa: E731
    n_tasks = len(batch)
    query_total = torch.zeros(())
    reptile = {n: torch.zeros_like(p) for n, p in params.items()}
    losses = []
    for i in range(n_tasks):
        t = batch.task(i)
        s_item, s_rating = t["support_item"], t["support_rating"]
        s_mask = batch.support_mask[i]
        if config.algorithm == "reptile":  # Reptile adapts on the whole task, support then query
            s_item = torch.cat([s_item, t["query_item"]])
            s_rating = torch.cat([s_rating, t["query_rating"]])
            s_mask = torch.cat([s_mask, batch.query_mask[i]])
        s_positions = torch.nonzero(s_mask > 0).flatten()
        fast = {n: params[n] for n in adapted}
        for k in range(config.inner_steps):
            full = {**params, **fast}
            pred = _predict(learner, full, t["user_idx"], s_item, s_item, s_rating, exclude_self=True)
            m = step_masks[i, k][s_positions] if step_masks is not None else torch.ones_like(s_rating)
            loss = masked_loss(pred, s_rating, m, config.inner_loss)
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order, allow_unused=True)
            fast = {n: fast[n] - lr(n) * (torch.zeros_like(fast[n]) if gi is None else gi) for n, gi in zip(fast, g)}
        full = {**params, **fast}
        if config.algorithm == "reptile":
            for n in adapted:
                reptile[n] = reptile[n] + (params[n] - fast[n]).detach() / n_tasks
            with torch.no_grad():
                pred = _predict(learner, full, t["user_idx"], s_item, s_item, s_rating, exclude_self=True)
                losses.append(float(((pred - s_rating) ** 2).mean()))
            continue
        pred = _predict(learner, full, t["user_idx"], t["query_item"], s_item, s_rating, exclude_self=False)
        q_loss = masked_loss(pred, t["query_rating"], torch.ones_like(pred), config.query_loss)
        query_total = query_total + q_loss / n_tasks
        losses.append(float(q_loss.detach()))
    named = learner.named_meta_parameters()
    if config.algorithm == "reptile":
        grads = {n: reptile[n] + (2 * config.l2 * params[n].detach() if config.l2 else 0) for n in params}
        return grads, sum(losses) / n_tasks
    total = query_total + (config.l2 * sum((p**2).sum() for p in params.values()) if config.l2 else 0)
    g = torch.autograd.grad(total, list(named.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if gi is None else gi) for (n, p), gi in zip(named.items(), g)}, float(total.detach())
