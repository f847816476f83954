"""Meta-learning settings, frozen and validated."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

from metarec.errors import ConfigError

Algorithm = Literal["maml", "fomaml", "reptile", "metasgd"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "reptile", "metasgd")
ADAPT_SCOPES: tuple[str, ...] = ("all", "head", "embeddings")
QUERY_LOSSES: tuple[str, ...] = ("squared", "absolute", "huber", "bce", "bpr", "softmax")
INNER_LOSSES: tuple[str, ...] = ("squared", "bce", "bpr", "softmax")
KERNEL_CHOICES: tuple[str, ...] = ("auto", "vmap", "batched_head", "one_step")
DEFAULT_INNER_LR = 0.05
MAX_INNER_STEPS = 1000


@dataclass(frozen=True)
class MetaConfig:
    """The inner loop (``inner_steps`` of lr ``inner_lr`` on the support set), the outer loop (Adam,
    lr ``outer_lr``, L2 weight ``l2`` on the meta-parameters: the seed's lambda ||phi||^2) and which
    parameters adapt per user (``adapt``: all, head - MeLU / ANIL -, or embeddings).

    ``query_loss`` is the outer loop's loss on the query set: ``squared`` (the seed's MSE),
    ``absolute`` (the error MAE measures) or ``huber`` (squared within 1 rating point, absolute
    beyond); for implicit feedback (a target > 0 is a positive, 0 a sampled negative) ``bce``, ``bpr`` or
    ``softmax`` (sampled softmax), see :mod:`metarec.meta.losses`. ``inner_loss`` is the inner loop's loss
    on the support set: least squares for ratings (and the iALS-style fit of implicit positives and
    sampled negatives), or one of the implicit losses.

    ``maml`` differentiates through the inner loop (exact second order); ``fomaml`` drops the
    second-order terms; ``metasgd`` learns a per-parameter inner learning rate (second order);
    ``reptile`` moves the initialisation towards each task's adapted parameters (inner loop over the
    whole task, no query/support distinction).

    ``kernel`` says which computation of the same maths runs (see :mod:`metarec.meta.kernels`):
    ``vmap`` (:mod:`metarec.meta.maml` as written), ``batched_head`` / ``one_step`` (FeatureMLP heads),
    or ``auto``: the fastest that applies. The learner logs its choice. ``compile_kernel``: run the
    ``one_step`` kernel's hand-written head through ``torch.compile`` (inductor; on CPU it needs a C++
    compiler): ~25 % less time in the head at K=1 on CPU, for ~45 s of compilation the first time on a
    machine (cached on disk; ~5 s per process after). Off by default (tests and short runs would pay the
    compilation); other kernels ignore it, and a compilation that fails falls back to eager, logged.
    """

    algorithm: Algorithm = "maml"
    adapt: Literal["all", "head", "embeddings"] = "head"
    inner_steps: int = 1
    eval_inner_steps: int | None = None
    inner_lr: float = DEFAULT_INNER_LR
    outer_lr: float = 1e-3
    l2: float = 0.0
    support_batch_size: int | None = None
    grad_clip: float | None = 10.0
    meta_batch_size: int = 32
    query_loss: Literal["squared", "absolute", "huber", "bce", "bpr", "softmax"] = "squared"
    inner_loss: Literal["squared", "bce", "bpr", "softmax"] = "squared"
    kernel: Literal["auto", "vmap", "batched_head", "one_step"] = "auto"
    compile_kernel: bool = False

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.adapt not in ADAPT_SCOPES:
            raise ConfigError(f"adapt must be one of {ADAPT_SCOPES}, got {self.adapt!r}")
        for name, steps in (("inner_steps", self.inner_steps), ("eval_inner_steps", self.eval_inner_steps)):
            if steps is not None and not 0 <= steps <= MAX_INNER_STEPS:  # 1e9 would hang, not fail
                raise ConfigError(f"{name} must be between 0 and {MAX_INNER_STEPS}, got {steps}")
        if self.inner_lr < 0 or self.outer_lr <= 0 or self.l2 < 0:
            raise ConfigError("learning rates must be positive and l2 non-negative")
        if self.support_batch_size is not None and self.support_batch_size < 1:
            raise ConfigError("support_batch_size must be >= 1")
        if self.meta_batch_size < 1:
            raise ConfigError("meta_batch_size must be >= 1")
        if self.query_loss not in QUERY_LOSSES:
            raise ConfigError(f"query_loss must be one of {QUERY_LOSSES}, got {self.query_loss!r}")
        if self.inner_loss not in INNER_LOSSES:
            raise ConfigError(f"inner_loss must be one of {INNER_LOSSES}, got {self.inner_loss!r}")
        if self.algorithm == "reptile" and self.query_loss != "squared":
            raise ConfigError("reptile has no query loss: query_loss must stay 'squared'")
        if self.kernel not in KERNEL_CHOICES:
            raise ConfigError(f"kernel must be one of {KERNEL_CHOICES}, got {self.kernel!r}")
        if (self.inner_steps == 0 and self.test_steps == 0 and self.inner_lr != DEFAULT_INNER_LR
                and self.algorithm != "metasgd"):
            warnings.warn(f"meta.inner_lr = {self.inner_lr} is unused: no inner gradient steps are taken "
                          "(inner_steps = 0; the adaptation, if any, is the model's closed-form fold-in)",
                          UserWarning, stacklevel=3)

    @property
    def test_steps(self) -> int:
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    @property
    def first_order(self) -> bool:
        return self.algorithm in ("fomaml", "reptile")

    @classmethod
    def melu(cls) -> "MetaConfig":
        """MeLU's published settings: only the fc head adapts, local lr 5e-6, global lr 5e-5, batch 32."""
        return cls(algorithm="maml", adapt="head", inner_steps=1, inner_lr=5e-6, outer_lr=5e-5, meta_batch_size=32)
