"""The losses of the inner loop (on the support set) and the outer loop (the configured loss on the query
set), over padded task rows where ``mask`` marks real entries.

Explicit ratings: squared, absolute or Huber error of each predicted rating. Implicit feedback (a target
> 0 is a positive, its value the confidence; 0 a sampled negative; predictions are unbounded scores):

* ``bce``: binary cross-entropy of sigmoid(score) against positive / negative, a mean over entries;
* ``bpr``: -log sigmoid(s_pos - s_neg) over every (positive, negative) pair of the set (Rendle et al.
  2009), a mean over pairs;
* ``softmax``: the sampled softmax, -log(e^s_pos / (e^s_pos + sum_neg e^s_neg)) for each positive
  against all of the set's negatives, a mean over positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLICIT_LOSSES: tuple[str, ...] = ("bce", "bpr", "softmax")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (mask = 1) entries; 0 for an empty set."""
    return ((pred - target) ** 2 * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def pointwise_loss(error: torch.Tensor, kind: str) -> torch.Tensor:
    """The outer loop's loss of each prediction error (``MetaConfig.query_loss``, explicit ratings)."""
    if kind == "squared":
        return error.square()
    if kind == "absolute":
        return error.abs()
    if kind == "huber":  # 1/2 e^2 within 1 rating point, |e| - 1/2 beyond
        return torch.nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=1.0)
    raise ValueError(f"unknown query loss {kind!r}")


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``kind`` loss of each set (last dim) over its real (mask = 1) entries; 0 for an empty set (or, for
    ``bpr`` / ``softmax``, a set without a positive or without a negative)."""
    if kind in IMPLICIT_LOSSES:
        return implicit_loss(pred, target, mask, kind)
    return (pointwise_loss(pred - target, kind) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def implicit_loss(score: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """``bce`` / ``bpr`` / ``softmax`` of each set's scores (see the module docstring)."""
    positive = mask * (target > 0).to(mask.dtype)
    negative = mask - positive
    if kind == "bce":
        bce = F.binary_cross_entropy_with_logits(score, (target > 0).to(score.dtype), reduction="none")
        return (bce * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    if kind == "bpr":
        pairs = positive.unsqueeze(-1) * negative.unsqueeze(-2)  # [..., i positive, j negative]
        margin = score.unsqueeze(-1) - score.unsqueeze(-2)
        return (F.softplus(-margin) * pairs).sum((-1, -2)) / pairs.sum((-1, -2)).clamp(min=1.0)
    if kind == "softmax":
        floor = torch.finfo(score.dtype).min
        neg_lse = torch.logsumexp(score.masked_fill(negative <= 0, floor), dim=-1, keepdim=True)
        # -log softmax of each positive vs the negatives; with no negative, neg_lse sits at the dtype's floor and
        # logaddexp(s, floor) - s is exactly 0 (and so is its gradient): such a set costs nothing
        per_positive = torch.logaddexp(score, neg_lse) - score
        return (per_positive * positive).sum(-1) / positive.sum(-1).clamp(min=1.0)
    raise ValueError(f"unknown implicit loss {kind!r}")
