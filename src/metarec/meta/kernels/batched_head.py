"""The batched-head kernel: every task's inner loop at once on ``[B, N, d]`` tensors, for a FeatureMLP
whose head alone adapts (MeLU / ANIL). The same maths as :mod:`metarec.meta.maml`; tests hold them equal.

Per-task weights are a leading dimension (``bmm``) and the support loss's gradient is written out with
differentiable ops, so the second-order meta-gradient is one ordinary backward through the whole inner
loop (no ``vmap(grad)``, no double backward). With a scalar inner rate the first layer never
materialises per-task weights: its item half after the inner steps is

    W_i^(K) = W_i - sum_k alpha D_k^T X_S        (D_k: gradient at the first layer's outputs, [S, h])

so any items X are mapped as  X W_i^T - (X X_S^T) F  with F = sum_k alpha D_k ([S, h]), and its user
half and bias only ever enter as c = W_u u + b, updated as c <- c - alpha (|u|^2 + 1) 1^T D_k. Per task
that replaces the S x d x h weight gradient and per-task product of every step with S x S x h work and
a shared ``mm`` (the "function space" form of the same update; exact, not an approximation). Weight
updates stay low-rank factors while that is cheaper (:class:`LowRankLinear`), and per-item work
(attribute embeddings, the first layer's item half) is done once per distinct item of the meta-batch.

Kernel entry points: :func:`applies`, :func:`meta_loss`, :func:`reptile_gradients`, :func:`adapt`,
:func:`predict`, :func:`predict_catalogue`.
"""

from __future__ import annotations

import torch

from metarec.meta.inputs import Task, rows
from metarec.meta.kernels.lowrank import HeadState, LowRankLinear, input_gradient, linear
from metarec.meta.kernels.served import adapt_one_step, one_user_applies, score_one_user
from metarec.meta.losses import masked_mse, pointwise_loss
from metarec.meta.maml import l2_penalty, reptile_update
from metarec.models.base import Params, RatingModel
from metarec.models.feature_mlp import FeatureMLP

USER_HALF, ITEM_HALF = ":user", ":item"


def applies(model: RatingModel, adapted: list[str], hoist: bool) -> str | None:
    """None when this kernel computes the learner's maths exactly; otherwise the reason it does not."""
    if not isinstance(model, FeatureMLP):
        return f"the model is a {type(model).__name__}, not a FeatureMLP"
    if not hoist or not set(adapted) <= set(model.parameter_groups()["head"]):
        return "parameters outside the MLP head adapt"
    if not model.head_is_plain():
        return "the head has dropout (the batched head is exact only for Linear / ReLU layers)"
    return None


def split_head(model: FeatureMLP, params: Params) -> Params:
    """Head entries with the first weight as its user and item halves (also for learning rates)."""
    (w1, _), *_ = model.linear_names()
    out = {n: v for n, v in params.items() if n != w1}
    w = params[w1]
    out[w1 + USER_HALF], out[w1 + ITEM_HALF] = w[..., : model.user_dim], w[..., model.user_dim:]
    return out

def merge_head(model: FeatureMLP, head: Params) -> Params:
    """Inverse of :func:`split_head`."""
    (w1, _), *_ = model.linear_names()
    out = {n: v for n, v in head.items() if not n.startswith(w1 + ":")}
    out[w1] = torch.cat([head[w1 + USER_HALF], head[w1 + ITEM_HALF]], dim=-1)
    return out


def _deep_forward(model: FeatureMLP, deep: Params, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Layers 2.. on the first layer's (post-ReLU) output: ratings [B, N] and each layer's input."""
    layers = model.linear_names()[1:]
    inputs = []
    for i, (wn, bn) in enumerate(layers):
        inputs.append(h)
        a = linear(h, deep[wn]) + deep[bn].unsqueeze(-2)
        h = torch.relu(a) if i < len(layers) - 1 else a
    return h.squeeze(-1) + model.rating_center, inputs

def _deep_backward(model: FeatureMLP, deep: Params, inputs: list[torch.Tensor], d_pred: torch.Tensor) -> tuple[Params, torch.Tensor]:
    """Per-task gradients of sum(pred * d_pred) w.r.t. layers 2.. and w.r.t. the first layer's
    pre-activation ([B, N, h])."""
    layers = model.linear_names()[1:]
    grads: Params = {}
    delta = d_pred.unsqueeze(-1)  # [B, N, 1]
    for j in range(len(layers) - 1, -1, -1):
        wn, bn = layers[j]
        inp = inputs[j]  # [B, N, in], post-ReLU
        grads[wn] = torch.bmm(delta.transpose(1, 2), inp)  # [B, out, in]
        grads[bn] = delta.sum(1)
        back = input_gradient(delta, deep[wn])
        delta = torch.ops.aten.threshold_backward(back, inp, 0.0)  # ReLU': inp > 0 where its pre-activation is
    return grads, delta


# explicit per-task weights (any per-parameter learning rates) ------------------------------
def head_forward(model: FeatureMLP, head: Params, user_vec: torch.Tensor, item_vec: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Ratings [B, N] of ``item_vec`` ([B, N, d_i], or [N, d_i] shared by all tasks) for ``user_vec``
    [B, d_u] under split-layout head entries, per task (leading B) or shared."""
    (w1, b1), *_ = model.linear_names()
    wu, wi = head[w1 + USER_HALF], head[w1 + ITEM_HALF]
    c = (torch.bmm(wu, user_vec.unsqueeze(-1)).squeeze(-1) if wu.dim() == 3 else user_vec @ wu.t()) + head[b1]
    h1 = torch.relu(linear(item_vec, wi) + c.unsqueeze(-2))
    pred, inputs = _deep_forward(model, head, h1)
    return pred, [h1, *inputs]

def head_backward(model: FeatureMLP, head: Params, user_vec: torch.Tensor, item_vec: torch.Tensor, cache: list,
                  d_pred: torch.Tensor) -> Params:
    """Per-task gradients of sum(pred * d_pred) w.r.t. every split-layout head entry."""
    (w1, b1), *_ = model.linear_names()
    grads, delta = _deep_backward(model, head, cache[1:], d_pred)
    x = item_vec if item_vec.dim() == 3 else item_vec.expand(delta.shape[0], *item_vec.shape)
    grads[w1 + ITEM_HALF] = torch.bmm(delta.transpose(1, 2), x)
    dsum = delta.sum(1)
    grads[b1] = dsum
    grads[w1 + USER_HALF] = dsum.unsqueeze(-1) * user_vec.unsqueeze(-2)
    return grads


# the inner loop ------------------------------------------------------------------------------
def adapt_head(model: FeatureMLP, head: Params, user_vec: torch.Tensor, support_vec: torch.Tensor, support_rating: torch.Tensor,
               masks: list[torch.Tensor], lr: float | Params, first_order: bool,
               support_proj: torch.Tensor | None = None) -> HeadState:
    """``len(masks)`` steps of gradient descent on every task's masked support MSE, from the shared
    head ``head`` (model naming). ``lr``: a scalar, or per-parameter tensors (model naming).
    Differentiable w.r.t. ``head``, ``lr`` and the vectors; with ``first_order`` the inner gradients
    are constants (computed without a graph). ``support_proj``: support_vec @ W_item^T if known."""
    if not isinstance(lr, (int, float)):
        return _adapt_explicit(model, head, user_vec, support_vec, support_rating, masks, lr, first_order)
    names = model.linear_names()
    (w1, b1) = names[0]
    w_user, w_item = head[w1][:, : model.user_dim], head[w1][:, model.user_dim:]
    c = torch.addmm(head[b1], user_vec, w_user.t())

    def start(detach: bool) -> list[LowRankLinear]:
        d = (lambda t: t.detach()) if detach else (lambda t: t)
        first = LowRankLinear(d(w_item), d(c), fixed_input=True)
        return [first, *(LowRankLinear(d(head[wn]), d(head[bn])) for wn, bn in names[1:])]

    state = HeadState(start(False), w_user=w_user, bias0=head[b1], user_vec=user_vec)
    if not masks:
        return state
    with torch.no_grad() if first_order else torch.enable_grad():
        layers = start(first_order)
        xs = support_vec.detach() if first_order else support_vec
        u = user_vec.detach() if first_order else user_vec
        if support_proj is None:  # the first layer's shared item half on the support rows: once for all steps
            proj = linear(xs, layers[0].weight)
        else:
            proj = support_proj.detach() if first_order else support_proj
        uu = (u * u).sum(-1, keepdim=True) + 1.0  # c moves by lr (|u|^2 + 1) 1^T delta
        gram = torch.bmm(xs, xs.transpose(1, 2)) if len(masks) > 1 else None  # the first layer's input, fixed
        shift = None
        n_layers = len(layers)
        for k, mask in enumerate(masks):
            # forward on the support rows, keeping each layer's input
            inputs, h = [], xs
            for i, layer in enumerate(layers):
                inputs.append(h)
                if i == 0:
                    a = layer.apply(h, proj if layer.weight.dim() == 2 else None, gram if layer.x is xs else None)
                else:
                    a = layer.apply(h)
                h = torch.relu(a) if i < n_layers - 1 else a
            pred = h.squeeze(-1) + model.rating_center
            # lr * d loss / d output (the backward is linear in it: every delta below comes scaled by lr)
            weight = (mask * (2.0 * lr / mask.sum(-1, keepdim=True).clamp(min=1.0))).detach()
            delta = ((pred - support_rating) * weight).unsqueeze(-1)
            # backward, then every layer's step (using the pre-step weights for the backward)
            steps = []
            for i in range(n_layers - 1, -1, -1):
                steps.append((i, delta))
                if i > 0:
                    delta = torch.ops.aten.threshold_backward(layers[i].back(delta), inputs[i], 0.0)
            new = list(layers)
            for i, lr_delta in steps:
                db = lr_delta.sum(1)
                new[i] = layers[i].step(lr_delta, inputs[i], uu if i == 0 else None, last=k == len(masks) - 1, db=db)
                if i == 0:
                    shift = db if shift is None else shift + db
            layers = new
    if first_order:  # adapted = phi - lr * (constant gradients): put live phi back under the constants
        live = state.layers
        out = []
        for i, (layer, base) in enumerate(zip(layers, start(True))):
            weight = live[i].weight if layer.weight.dim() == 2 else live[i].weight + (layer.weight - base.weight)
            if i == 0:  # c' = (W_u - shift u_const^T) u + b - shift, u live where W_u meets it
                bias = live[0].bias - shift * ((user_vec.detach() * user_vec).sum(-1, keepdim=True) + 1.0)
            else:
                bias = live[i].bias + (layer.bias - base.bias)
            out.append(LowRankLinear(weight, bias, layer.a, layer.x, layer.fixed_input))
        layers = out
    state.layers, state.shift = layers, shift
    return state

def _adapt_explicit(model: FeatureMLP, head: Params, user_vec, support_vec, support_rating, masks, lr: Params,
                    first_order: bool) -> HeadState:
    fast = split_head(model, head)
    lrs = split_head(model, lr)
    for mask in masks:
        with torch.no_grad() if first_order else torch.enable_grad():
            cur = {n: v.detach() for n, v in fast.items()} if first_order else fast
            u = user_vec.detach() if first_order else user_vec
            xs = support_vec.detach() if first_order else support_vec
            pred, cache = head_forward(model, cur, u, xs)
            count = mask.sum(-1, keepdim=True).clamp(min=1.0)
            d_pred = (pred - support_rating) * mask * (2.0 / count)
            g = head_backward(model, cur, u, xs, cache, d_pred)
        fast = {n: p - lrs[n] * g[n] for n, p in fast.items()}
    return HeadState(explicit=fast, user_vec=user_vec)


def predict_head(model: FeatureMLP, state: HeadState, item_vec: torch.Tensor, item_proj: torch.Tensor | None = None,
                 item_gram: torch.Tensor | None = None) -> torch.Tensor:
    """Ratings [B, N] of ``item_vec`` ([B, N, d_i] per task, or [N, d_i] shared) under adapted heads;
    ``item_proj``: item_vec @ W_item^T under the shared first weight, and ``item_gram``: item_vec @
    support_vec^T ([B, N, S]), when known."""
    if state.explicit is not None:
        return head_forward(model, state.explicit, state.user_vec, item_vec)[0]
    h = item_vec
    n_layers = len(state.layers)
    inplace = not torch.is_grad_enabled()  # serving: no graph, fresh activations can be reused
    for i, layer in enumerate(state.layers):
        if i == 0:
            a = layer.apply(h, item_proj if layer.weight.dim() == 2 else None,
                            item_gram if layer.a is not None and layer.fixed_input else None)
        else:
            a = layer.apply(h)
        h = (a.relu_() if inplace else torch.relu(a)) if i < n_layers - 1 else a
    return h.squeeze(-1) + model.rating_center

def project_items(model: FeatureMLP, head: Params, item_vec: torch.Tensor) -> torch.Tensor:
    """item_vec @ W_item^T under the (shared) head ``head``: the first layer's item half, reusable by
    :meth:`predict_head` (``item_proj``) for every user."""
    (w1, _), *_ = model.linear_names()
    return linear(item_vec, head[w1][:, model.user_dim:])

def head_params(model: FeatureMLP, state: HeadState, n_tasks: int) -> Params:
    """The adapted head as explicit per-task parameters (model naming, leading task dim)."""
    if state.explicit is not None:
        head = merge_head(model, state.explicit)
    else:
        names = model.linear_names()
        head = {}
        for (wn, bn), layer in zip(names[1:], state.layers[1:]):
            head[wn], head[bn] = layer.dense(), layer.bias
        (w1, b1), first = names[0], state.layers[0]
        if state.shift is None:
            head[w1] = torch.cat([state.w_user, first.weight], dim=-1)
            head[b1] = state.bias0
        else:
            w_item = first.dense()
            w_item = w_item if w_item.dim() == 3 else w_item.expand(n_tasks, *w_item.shape)
            w_user = state.w_user - state.shift.unsqueeze(-1) * state.user_vec.unsqueeze(-2)
            head[w1] = torch.cat([w_user, w_item], dim=-1)
            head[b1] = state.bias0 - state.shift
    shapes = _head_dims(model)
    return {n: (v if v.dim() > shapes[n] else v.expand(n_tasks, *v.shape)) for n, v in head.items()}

def _head_dims(model: FeatureMLP) -> dict[str, int]:
    dims = model.__dict__.get("_head_dims_cache")
    if dims is None:
        dims = {n: p.dim() for n, p in model.named_parameters() if model.param_group(n)}
        model.__dict__["_head_dims_cache"] = dims
    return dims



# ---------------------------------------------------------------------------- the kernel, per meta-batch
def adapted_heads(model: FeatureMLP, head: Params, task: Task, steps: int, alpha: float | Params,
                  first_order: bool, support_proj: torch.Tensor | None = None) -> HeadState:
    """phi_i^(K) of every task's head (``task`` from ``inputs.task_inputs(..., hoist=True)``)."""
    masks = task.get("step_masks")
    per_step = [task["support_mask"] if masks is None else masks[:, k] for k in range(steps)]
    return adapt_head(model, head, task["user_vec"], task["support_vec"], task["support_rating"], per_step, alpha,
                      first_order, support_proj=support_proj)


def meta_loss(model: FeatureMLP, params: Params, adapted: list[str], task: Task, steps: int, alpha: float | Params,
              first_order: bool, kind: str, l2: float) -> torch.Tensor:
    """L(phi) = mean_i l_Q_i(phi_i^(K)) + lambda ||phi||^2, as :func:`metarec.meta.maml.meta_loss`."""
    # the first layer's item half once per distinct item of the batch, not once per rating
    proj = project_items(model, params, task["item_vec"]) if "item_vec" in task else None
    state = adapted_heads(model, {n: params[n] for n in adapted}, task, steps, alpha, first_order,
                          support_proj=None if proj is None else rows(proj, task["support_inv"]))
    pred = predict_head(model, state, task["query_vec"], None if proj is None else rows(proj, task["query_inv"]))
    # mean over tasks of the masked query loss, as one weighted sum (weights: mask / (count * B))
    mask = task["query_mask"]
    weight = mask / (mask.sum(-1, keepdim=True).clamp(min=1.0) * mask.shape[0])
    loss = (pointwise_loss(pred - task["query_rating"], kind) * weight).sum()
    return loss + l2_penalty(params, l2) if l2 else loss


def reptile_gradients(model: FeatureMLP, params: Params, adapted: list[str], task: Task, steps: int, alpha: float,
                      l2: float) -> tuple[dict[str, torch.Tensor], float]:
    """As :func:`metarec.meta.maml.reptile_gradients` (``task`` built with ``whole_task=True``)."""
    with torch.no_grad():
        state = adapted_heads(model, {n: params[n] for n in adapted}, task, steps, alpha, True)
        losses = masked_mse(predict_head(model, state, task["support_vec"]), task["support_rating"], task["support_mask"])
        phi_k = head_params(model, state, len(task["user_vec"]))
        return reptile_update(params, {n: phi_k[n].mean(0) for n in adapted}, l2), float(losses.mean())


def adapt(model: FeatureMLP, params: Params, adapted: list[str], task: Task, steps: int,
          alpha: float | Params) -> tuple[HeadState, Params]:
    """Every task's adapted head, compact (for :func:`predict`) and as explicit per-task parameters.
    ``task["support_proj"]``: the support rows' first-layer item half, when the caller has it (serving)."""
    with torch.no_grad():
        head = {n: params[n] for n in adapted}
        proj = task.get("support_proj")
        if steps == 1 and isinstance(alpha, (int, float)) and "step_masks" not in task:
            state = adapt_one_step(model, head, task["user_vec"], task["support_vec"], task["support_rating"],
                                   task["support_mask"], float(alpha), proj)
        else:
            state = adapted_heads(model, head, task, steps, alpha, True, support_proj=proj)
        return state, head_params(model, state, len(task["user_vec"]))


def predict(model: FeatureMLP, state: HeadState, item_vec: torch.Tensor) -> torch.Tensor:
    """Predictions [B, N] of per-task item vectors [B, N, d_i] under the adapted heads."""
    with torch.no_grad():
        return predict_head(model, state, item_vec)


def predict_catalogue(model: FeatureMLP, state: HeadState | None, adapted: Params, task: Task, items: torch.Tensor,
                      item_vec: torch.Tensor, item_proj: torch.Tensor | None,
                      catalogue_gram: torch.Tensor | None) -> torch.Tensor:
    """Scores [B, N] of ``items`` (vectors ``item_vec``, shared by all tasks) for every adapted task.
    ``state``: the compact heads from :func:`adapt` (None: use the explicit ``adapted``); ``item_proj``:
    the first layer's item half of ``item_vec``; ``catalogue_gram``: the whole catalogue's Gram matrix
    (``items`` index its rows), so items are scored against a user's support set by a lookup."""
    n_tasks, n_items = len(task["user_vec"]), item_vec.shape[-2]
    # items in chunks: every chunk's [B, chunk, max(S, 64)] intermediates stay within ~4 MB
    # (large fresh allocations cost page faults, more than the products themselves)
    width = n_tasks * max(task["support_item"].shape[-1], 64)
    chunk = max(32, (1 << 20) // width)
    preds = []
    support = task["support_item"]
    lookup = state is not None and catalogue_gram is not None and item_vec.dim() == 2
    whole = lookup and n_items == catalogue_gram.shape[0] and bool(
        (items == torch.arange(n_items, device=items.device)).all())
    if whole and n_tasks == 1 and item_proj is not None and one_user_applies(state):
        with torch.no_grad():
            return score_one_user(model, state, item_proj, catalogue_gram.index_select(0, support.reshape(-1)))
    with torch.no_grad():
        for lo in range(0, n_items, chunk):
            vec = item_vec[..., lo:lo + chunk, :]
            proj = None if item_proj is None else item_proj[..., lo:lo + chunk, :]
            if state is None:
                preds.append(head_forward(model, split_head(model, adapted), task["user_vec"], vec)[0])
                continue
            gram = None  # item . support vector products [B, n, S], looked up in the Gram matrix
            if whole:  # symmetric: the support items' rows of this column block
                block = catalogue_gram[:, lo:lo + chunk].index_select(0, support.reshape(-1))
                gram = block.view(*support.shape, -1).transpose(1, 2)
            elif lookup:
                found = catalogue_gram.index_select(0, items[lo:lo + chunk])
                gram = found.index_select(1, support.reshape(-1)).view(found.shape[0], *support.shape).permute(1, 0, 2)
            preds.append(predict_head(model, state, vec, proj, gram))
    return preds[0] if len(preds) == 1 else torch.cat(preds, dim=-1)
