"""Faster kernels for the maths in :mod:`metarec.meta.maml`, each exact where it applies and tested
against it: ``batched_head`` (FeatureMLP heads, all tasks' inner loops as batched products), ``one_step``
(its meta-gradient for one inner step, written out by hand) and ``fused_adam`` (the outer step).
:func:`choose_kernel` picks one by ``MetaConfig.kernel``."""

from __future__ import annotations

import logging

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig
from metarec.meta.kernels import batched_head, one_step
from metarec.models.base import RatingModel

log = logging.getLogger(__name__)

KERNELS: tuple[str, ...] = ("vmap", "batched_head", "one_step")


def kernel_reasons(model: RatingModel, config: MetaConfig, adapted: list[str], hoist: bool) -> dict[str, str | None]:
    """{kernel: None where it applies, else why not}; ``vmap`` (maml.py itself) always applies."""
    head = batched_head.applies(model, adapted, hoist)
    if head is None and (config.inner_loss != "squared" or config.query_loss not in ("squared", "absolute", "huber")):
        head = "it is written for rating losses (squared inner loss), not implicit feedback's"
    return {"vmap": None, "batched_head": head, "one_step": one_step.applies(model, config, adapted, hoist)}


def choose_kernel(model: RatingModel, config: MetaConfig, adapted: list[str], hoist: bool) -> str:
    """``config.kernel`` if it applies (a ConfigError naming why not), or for ``auto`` the fastest that
    does: one_step, then batched_head, then vmap. The choice is logged."""
    reasons = kernel_reasons(model, config, adapted, hoist)
    if config.kernel != "auto":
        if reasons[config.kernel] is not None:
            raise ConfigError(f"meta.kernel = {config.kernel!r} does not apply: {reasons[config.kernel]}")
        chosen = config.kernel
    else:
        chosen = next(k for k in ("one_step", "batched_head", "vmap") if reasons[k] is None)
    log.info("meta-learning kernel: %s (%s)", chosen, "configured" if config.kernel != "auto" else "auto")
    return chosen
