"""MAML's maths: the inner loop, the meta-objective and the meta-gradient, for all tasks of a meta-batch
in one ``vmap``.

Notation as in MAML (Finn et al. 2017) and the README: meta-parameters phi, split into the part that
adapts per task (``fast``: the ``adapt`` scope) and the rest (``frozen``); a task T_i with support set S_i
and query set Q_i; inner rate alpha (a number, or a tensor per parameter for Meta-SGD); L2 weight lambda.

    inner loop      phi_i^(0) = phi,   phi_i^(k+1) = phi_i^(k) - alpha * grad L_S_i(phi_i^(k))
    support loss    L_S_i(phi) = mean_{(v, y) in S_i} (f_phi(u_i, v) - y)^2   (or an implicit-feedback loss:
                                 ``inner_loss``, see :mod:`metarec.meta.losses`)
    meta-objective  L(phi) = mean_i l_Q_i(phi_i^(K)) + lambda ||phi||^2
    meta-gradient   grad_phi L(phi)                        (second order: through the inner loop)
                    first order: each grad L_S_i a constant;
                    Reptile:     phi - mean_i phi_i^(K)  (+ 2 lambda phi), the inner loop on all of T_i

``predict(params, task, which)`` is f under ``params`` on one task's ``which`` ("support" / "query")
items (:func:`metarec.meta.inputs.predict_task`); ``task`` holds one task's tensors, batched on dim 0
before ``vmap``. The faster kernels in :mod:`metarec.meta.kernels` compute the same quantities and are
tested against these functions; :mod:`metarec.meta.reference` is an independent per-task loop.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch.func import grad, vmap

from metarec.meta.inputs import Task
from metarec.meta.losses import masked_loss
from metarec.models.base import Params

Predict = Callable[[Params, Task, str], torch.Tensor]
Rate = float | Mapping[str, torch.Tensor]  # alpha: one number, or one tensor per adapted parameter


def support_loss(predict: Predict, params: Params, task: Task, mask: torch.Tensor,
                 kind: str = "squared") -> torch.Tensor:
    """L_S_i(phi): the masked mean ``kind`` loss on the task's support set (squared error for ratings)."""
    return masked_loss(predict(params, task, "support"), task["support_rating"], mask, kind)


def inner_loop(predict: Predict, fast: Params, frozen: Params, task: Task, steps: int, alpha: Rate,
               first_order: bool, inner_kind: str = "squared") -> Params:
    """phi_i^(K): ``steps`` gradient steps on L_S_i from ``fast``; ``task["step_masks"]`` [K, S] (if
    present) picks each step's support mini-batch."""
    masks = task.get("step_masks")
    for k in range(steps):
        mask = task["support_mask"] if masks is None else masks[k]
        g = grad(lambda f: support_loss(predict, {**frozen, **f}, task, mask, inner_kind))(fast)
        if first_order:
            g = {n: v.detach() for n, v in g.items()}
        fast = {n: p - _rate(alpha, n) * g[n] for n, p in fast.items()}
    return fast


def query_loss(predict: Predict, fast: Params, frozen: Params, task: Task, steps: int, alpha: Rate,
               first_order: bool, kind: str, inner_kind: str = "squared") -> torch.Tensor:
    """l_Q_i(phi_i^(K)): the ``kind`` loss (squared, absolute, huber; bce, bpr, softmax) on the query set
    after adapting."""
    adapted = inner_loop(predict, fast, frozen, task, steps, alpha, first_order, inner_kind)
    return masked_loss(predict({**frozen, **adapted}, task, "query"), task["query_rating"], task["query_mask"], kind)


def l2_penalty(params: Params, l2: float) -> torch.Tensor:
    """lambda ||phi||^2."""
    if l2 == 0:
        return torch.zeros((), device=next(iter(params.values())).device)
    return l2 * sum((p ** 2).sum() for p in params.values())


def meta_loss(predict: Predict, params: Params, adapted: list[str], tasks: Task, steps: int, alpha: Rate,
              first_order: bool, kind: str, l2: float, inner_kind: str = "squared") -> torch.Tensor:
    """L(phi) = mean_i l_Q_i(phi_i^(K)) + lambda ||phi||^2, every task in one ``vmap``."""
    fast, frozen = split(params, adapted)
    alphas = dict(alpha) if isinstance(alpha, Mapping) else None  # a tensor pytree (Meta-SGD) or none

    def per_task(fast_: Params, frozen_: Params, alphas_, task: Task) -> torch.Tensor:
        return query_loss(predict, fast_, frozen_, task, steps, alpha if alphas_ is None else alphas_, first_order, kind,
                          inner_kind)

    losses = vmap(per_task, in_dims=(None, None, None, 0), randomness="different")(fast, frozen, alphas, tasks)
    return losses.mean() + l2_penalty(params, l2)


def meta_gradients(loss: torch.Tensor, named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """grad L(phi) for every meta-parameter in ``named`` (zero where L does not depend on it)."""
    found = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named.items(), found)}


def adapt(predict: Predict, params: Params, adapted: list[str], tasks: Task, steps: int,
          alpha: Rate, inner_kind: str = "squared") -> dict[str, torch.Tensor]:
    """phi_i^(K) of every task (leading task dim), nothing recorded for a meta-gradient."""
    fast, frozen = split(params, adapted)
    alphas = dict(alpha) if isinstance(alpha, Mapping) else None
    found = vmap(lambda f, fr, a, t: inner_loop(predict, f, fr, t, steps, alpha if a is None else a, True, inner_kind),
                 in_dims=(None, None, None, 0), randomness="different")(fast, frozen, alphas, tasks)
    return {n: v.detach() for n, v in found.items()}


def reptile_gradients(predict: Predict, params: Params, adapted: list[str], tasks: Task, steps: int,
                      alpha: float, l2: float, inner_kind: str = "squared") -> tuple[dict[str, torch.Tensor], float]:
    """Reptile's meta-gradient phi - mean_i phi_i^(K) (adapted parameters; 0 for the rest) + 2 lambda phi,
    with ``tasks`` holding each task's whole ratings as its support; and the mean support loss after."""
    fast, frozen = split(params, adapted)

    def per_task(fast_: Params, frozen_: Params, task: Task):
        phi_k = inner_loop(predict, fast_, frozen_, task, steps, alpha, True, inner_kind)
        return phi_k, support_loss(predict, {**frozen_, **phi_k}, task, task["support_mask"], inner_kind)

    with torch.no_grad():
        phi_k, losses = vmap(per_task, in_dims=(None, None, 0), randomness="different")(fast, frozen, tasks)
        return reptile_update(params, {n: v.mean(0) for n, v in phi_k.items()}, l2), float(losses.mean())


def reptile_update(params: Params, mean_adapted: Params, l2: float) -> dict[str, torch.Tensor]:
    """phi - mean_i phi_i^(K) where a parameter adapts, 0 elsewhere, + 2 lambda phi everywhere."""
    out = {n: (p - mean_adapted[n]) if n in mean_adapted else torch.zeros_like(p) for n, p in params.items()}
    return {n: g + 2 * l2 * params[n] for n, g in out.items()} if l2 else out


def split(params: Params, adapted: list[str]) -> tuple[Params, Params]:
    """(fast, frozen): the parameters that adapt per task and the rest."""
    chosen = set(adapted)
    return {n: params[n] for n in adapted}, {n: p for n, p in params.items() if n not in chosen}


def _rate(alpha: Rate, name: str) -> torch.Tensor | float:
    return alpha[name] if isinstance(alpha, Mapping) else alpha
