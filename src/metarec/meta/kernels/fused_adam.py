"""The outer step's kernel: gradient clipping and Adam's update in one fused call on the optimiser's state.

``torch.optim.Adam(fused=True).step()`` runs one kernel over all parameters, but its per-call bookkeeping
(grouping tensors by device and dtype, state checks) costs more than the arithmetic for a model this
size. :func:`step` calls the same kernel with the same arguments directly; :func:`applies` says when that
is exactly what ``Optimizer.step`` would do. ``tests/meta/kernels/test_fused_adam.py`` holds the two equal.
"""

from __future__ import annotations

import torch
from torch import nn


def make_adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel over all parameters: ~2x faster than the per-tensor loop on CPU) when the
    parameters allow it."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - device / dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, foreach=True)


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (2-norm over all gradients, scaled by
    min(1, max_norm / (norm + 1e-6))) without its per-call grouping of tensors by device and dtype."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if len({(g.device, g.dtype) for g in grads}) > 1:  # pragma: no cover - mixed devices / dtypes
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    torch._foreach_mul_(grads, _clip_coefficient(grads, max_norm))


def _clip_coefficient(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


def applies(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor]) -> bool:
    """Whether ``optimizer`` is a plain fused Adam over exactly ``params`` with its state initialised (its
    first step goes the usual way) and the gradients share one device and dtype."""
    if not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if (not group["fused"] or group["amsgrad"] or group["maximize"] or group["capturable"]
            or group["differentiable"] or group.get("decoupled_weight_decay", False) or len(group["params"]) != len(params)
            or any(a is not b for a, b in zip(group["params"], params))):
        return False
    states = [optimizer.state.get(p) for p in params]
    if any(not st or st["step"].dtype != torch.float32 for st in states):
        return False
    return len({(g.device, g.dtype) for g in grads}) <= 1


def step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor],
         max_norm: float | None) -> None:
    """Clip ``grads`` as :func:`clip_grad_norm_` does, then Adam's update of ``params`` with them: the fused
    kernel on the optimiser's own state (call only where :func:`applies`)."""
    group = optimizer.param_groups[0]
    states = [optimizer.state[p] for p in params]
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    if max_norm is not None:  # clip_grad_norm_'s arithmetic; a factor of 1 is skipped (x * 1.0 == x)
        coef = _clip_coefficient(grads, max_norm)
        if float(coef) < 1.0:
            grads = torch._foreach_mul(grads, coef)
    steps = [st["step"] for st in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], [],
                       steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                       grad_scale=None, found_inf=None)


def plain_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor],
               max_norm: float | None) -> None:
    """The same update through ``Optimizer.step`` (the first step, or an optimiser :func:`step` does not fit)."""
    for p, g in zip(params, grads):
        p.grad = g
    if max_norm is not None:
        clip_grad_norm_(params, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
