"""A served request's shortcuts in the batched head: one inner step written out (K=1, a scalar rate, no
graph) and one adapted user's whole catalogue scored by plain 2-d products. Each computes what the general
functions of :mod:`metarec.meta.kernels.batched_head` compute, which call them where they apply;
``tests/meta/test_kernel_batched_head.py`` and ``tests/serve/test_served_fast_path.py`` hold them equal."""

from __future__ import annotations

import torch

from metarec.meta.kernels.lowrank import HeadState, LowRankLinear, affine, input_gradient, linear, relu_back_
from metarec.models.base import Params
from metarec.models.feature_mlp import FeatureMLP


def adapt_one_step(model: FeatureMLP, head: Params, user_vec: torch.Tensor, support_vec: torch.Tensor,
                   support_rating: torch.Tensor, mask: torch.Tensor, lr: float,
                   support_proj: torch.Tensor | None = None) -> HeadState:
    """One inner step of every task's head with a scalar rate, without a graph: the state
    ``batched_head.adapt_head`` gives for one step (same maths), written out for the K=1 serving case. The
    general loop's bookkeeping (a second set of layers, the first-order re-assembly around live
    parameters, Gram matrices for later steps) costs more than the step itself for one user."""
    names = model.linear_names()
    (w1, b1), n_layers = names[0], len(names)
    w_user, w_item = head[w1][:, : model.user_dim], head[w1][:, model.user_dim:]
    c = torch.addmm(head[b1], user_vec, w_user.t())  # the first layer's user half and bias, per task
    proj = linear(support_vec, w_item) if support_proj is None else support_proj
    h = (proj + c.unsqueeze(-2)).relu_()
    inputs = [support_vec, h]  # each layer's input on the support rows
    for j, (wn, bn) in enumerate(names[1:], 1):
        h = affine(h, head[wn], head[bn])
        if j < n_layers - 1:
            h = h.relu_()
            inputs.append(h)
    pred = h.squeeze(-1) + model.rating_center
    # lr * d loss / d output, as adapt_head: every delta below comes scaled by lr
    delta = ((pred - support_rating) * (mask * (2.0 * lr / mask.sum(-1, keepdim=True).clamp(min=1.0)))).unsqueeze(-1)
    layers: list[LowRankLinear] = [None] * n_layers  # type: ignore[list-item]
    for i in range(n_layers - 1, 0, -1):  # backward with the pre-step weights, each layer's step as it goes
        wn, bn = names[i]
        layers[i] = LowRankLinear(head[wn], head[bn]).step(delta, inputs[i], last=True)
        delta = relu_back_(input_gradient(delta, head[wn]), inputs[i])
    shift = delta.sum(1)
    uu = (user_vec * user_vec).sum(-1, keepdim=True) + 1.0  # c moves by lr (|u|^2 + 1) 1^T delta
    layers[0] = LowRankLinear(w_item, c, fixed_input=True).step(delta, support_vec, uu, last=True, db=shift)
    return HeadState(layers, w_user=w_user, bias0=head[b1], shift=shift, user_vec=user_vec)


def one_user_applies(state: HeadState) -> bool:
    """Whether :func:`_score_one_user` computes ``state``'s scores: compact layers whose first one kept the
    shared item weight (its step pending as factors over the support rows, or no step)."""
    if state.explicit is not None:
        return False
    first = state.layers[0]
    return first.weight.dim() == 2 and (first.a is None or first.fixed_input)


def score_one_user(model: FeatureMLP, state: HeadState, item_proj: torch.Tensor, support_gram: torch.Tensor
                   ) -> torch.Tensor:
    """One adapted user's scores [1, N] of the whole catalogue (a served request): what
    ``batched_head.predict_head`` computes, as plain 2-d products. ``item_proj``: the catalogue's
    first-layer item half [N, h]; ``support_gram``: the catalogue Gram matrix's rows of the user's support
    items [S, N].

    The first layer is X W_i^T + c' - (X X_S^T) F: the shared projection plus the step's rank-S correction
    in one ``addmm`` (reading the Gram rows transposed, no copy), where the batched form runs a ``bmm`` over
    a [1, N, S] view and separate negate and add passes over [N, h]; each deeper layer is one ``addmm``
    with its folded per-user weight (ML-1M, one user: 1.1 -> 0.85 ms)."""
    first = state.layers[0]
    if first.a is None:
        h = item_proj + first.bias[0]
    else:
        h = torch.addmm(item_proj, support_gram.t(), first.a[0], alpha=-1.0).add_(first.bias[0])
    n_layers = len(state.layers)
    for i, layer in enumerate(state.layers):
        if i == 0:
            h = h.relu_()
            continue
        w, b = layer.dense(), layer.bias
        h = torch.addmm(b[0] if b.dim() == 2 else b, h, (w[0] if w.dim() == 3 else w).t())
        if i < n_layers - 1:
            h = h.relu_()
    return (h.squeeze(-1) + model.rating_center).unsqueeze(0)
