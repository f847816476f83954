"""The losses of the inner loop (masked squared error on the support set) and the outer loop (the
configured pointwise loss on the query set), over padded task rows where ``mask`` marks real ratings."""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (mask = 1) entries; 0 for an empty set."""
    return ((pred - target) ** 2 * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def pointwise_loss(error: torch.Tensor, kind: str) -> torch.Tensor:
    """The outer loop's loss of each prediction error (``MetaConfig.query_loss``)."""
    if kind == "squared":
        return error.square()
    if kind == "absolute":
        return error.abs()
    if kind == "huber":  # 1/2 e^2 within 1 rating point, |e| - 1/2 beyond
        return torch.nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=1.0)
    raise ValueError(f"unknown query loss {kind!r}")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean ``kind`` loss over the real (mask = 1) entries; 0 for an empty set."""
    return (pointwise_loss(pred - target, kind) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
