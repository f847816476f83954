"""FeatureMLP: embeddings of the user's and the item's attributes, concatenated, an MLP predicts the rating.

This is the seed's worked example and MeLU's architecture (the ``melu`` preset: embedding 32, fc 64-64-1,
only the fc head adapts in the inner loop).

Besides the functional ``score`` (used under ``vmap`` by the generic engine), the model has a batched
head for the engine's fast path (:meth:`FeatureMLP.adapt_head`): all tasks' inner loops at once on
``[B, N, d]`` tensors with ``bmm``, the support loss's gradient written out by hand with differentiable
ops, so that the meta-gradient is one ordinary backward through the whole inner loop (no
``vmap(grad)``, no double backward). With a scalar inner learning rate the first layer never
materialises per-task weights: its item half after the inner steps is

    W_i^(K) = W_i - sum_k alpha D_k^T X_S        (D_k: gradient at the first layer's outputs, [S, h])

so any items X are mapped as  X W_i^T - (X X_S^T) F  with F = sum_k alpha D_k ([S, h]), and its user
half and bias only ever enter as c = W_u u + b, updated as c <- c - alpha (|u|^2 + 1) 1^T D_k. Per task
that replaces the S x d x h weight gradient and per-task product of every step with S x S x h work and
a shared ``mm`` (the "function space" form of the same update; exact, not an approximation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarec.models.base import Context, Params, RatingModel
from metarec.models.embedding import mlp

USER_HALF, ITEM_HALF = ":user", ":item"


@dataclass
class LowRankLinear:
    """One linear layer of every task's adapted head: W = ``weight`` - ``a``^T ``x`` (per task), bias ``bias``.

    ``weight`` is shared ([out, in]) or per task ([B, out, in]); ``bias`` [out] or [B, out]. The pending
    low-rank part (``a`` [B, r, out], ``x`` [B, r, in]) is what gradient steps added: a step's weight
    gradient is ``delta^T input`` over the task's support rows, so it is kept as its two factors while
    applying them (r (in + out) per row) is cheaper than a dense per-task weight (in x out per row), and
    folded into ``weight`` (one ``bmm``) once it is not.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    a: torch.Tensor | None = None
    x: torch.Tensor | None = None
    fixed_input: bool = False  # every step's input is the same tensor (the first layer's support items)

    def apply(self, inp: torch.Tensor, proj: torch.Tensor | None = None, gram: torch.Tensor | None = None) -> torch.Tensor:
        """inp [B, N, in] (or [N, in] shared) -> [B, N, out]. ``proj``: inp @ weight^T and ``gram``:
        inp @ x^T, when already known."""
        if self.a is not None and gram is None:
            # the factors cost n r (in + out); a dense per-task weight r in out to build, plus n in out
            # to apply where the shared projection ``proj`` would otherwise have been reused
            n, rank = inp.shape[-2], self.a.shape[1]
            n_out, n_in = self.weight.shape[-2:]
            if rank * n_in * n_out + (n * n_in * n_out if proj is not None else 0) < n * rank * (n_in + n_out):
                return _affine(inp, self.dense(), self.bias)
        if self.a is None:
            return _affine(inp, self.weight, self.bias) if proj is None else proj + self.bias.unsqueeze(-2)
        if gram is None:
            gram = _linear(inp, self.x)  # inp @ x^T: [B, n, r]
        low_rank = torch.matmul(gram, self.a)
        base = _linear(inp, self.weight) if proj is None else proj
        if not torch.is_grad_enabled() and low_rank.shape[-2:] == base.shape[-2:]:  # serving: fewer temporaries
            return low_rank.neg_().add_(base).add_(self.bias.unsqueeze(-2))
        return base + self.bias.unsqueeze(-2) - low_rank

    def back(self, delta: torch.Tensor) -> torch.Tensor:
        """Gradient at the input from the gradient ``delta`` [B, N, out] at the output."""
        w = self.weight
        if w.dim() == 3:
            d = torch.bmm(delta, w)
        elif w.shape[0] == 1:
            d = delta * w[0]
        else:
            d = delta @ w
        if self.a is not None:
            d = d - torch.bmm(torch.bmm(delta, self.a.transpose(1, 2)), self.x)
        return d

    def step(self, lr_delta: torch.Tensor, inp: torch.Tensor, bias_scale: torch.Tensor | None = None,
             last: bool = False, db: torch.Tensor | None = None) -> "LowRankLinear":
        """The layer after one gradient step: W -= lr delta^T inp, b -= lr 1^T delta (``lr_delta`` = lr delta).
        ``last``: no support pass follows (only predictions), so the factors are applied once more."""
        db = lr_delta.sum(1) if db is None else db
        bias = self.bias - (db if bias_scale is None else bias_scale * db)
        if self.a is None:
            a, x = lr_delta, inp
        elif self.fixed_input:
            a, x = self.a + lr_delta, self.x
        else:
            a, x = torch.cat([self.a, lr_delta], 1), torch.cat([self.x, inp], 1)
        n_out, n_in = self.weight.shape[-2:]
        rank = a.shape[1]
        # Applying the factors costs r (in + out) per row (r out for a fixed input, whose Gram matrix
        # is cached), a dense per-task weight in x out. Stay low-rank while that is cheaper, now and -
        # unless no support pass follows - after the next step too (else that step would pay for
        # folding a rank of 2S instead of S).
        per_row = n_out if self.fixed_input else n_in + n_out
        grown = rank if (last or self.fixed_input) else rank + inp.shape[1]
        if max(rank, grown) * per_row > n_in * n_out:
            return LowRankLinear(self.weight - torch.bmm(a.transpose(1, 2), x), bias, fixed_input=self.fixed_input)
        return LowRankLinear(self.weight, bias, a, x, self.fixed_input)

    def dense(self) -> torch.Tensor:
        return self.weight if self.a is None else self.weight - torch.bmm(self.a.transpose(1, 2), self.x)


@dataclass
class HeadState:
    """Every task's adapted head: ``layers`` (the first one's weight is the item half, its bias is
    c = W_u u + b per task) or, with per-parameter learning rates, ``explicit`` split-layout weights."""

    layers: list[LowRankLinear] | None = None
    w_user: torch.Tensor | None = None  # the first weight's user half before adaptation
    bias0: torch.Tensor | None = None  # the first bias before adaptation
    shift: torch.Tensor | None = None  # [B, h]: total step of the first bias (W_u moved by shift u^T)
    user_vec: torch.Tensor | None = None
    explicit: Params | None = None


class FeatureMLP(RatingModel):
    """rating = center + MLP([e(user attributes); e(item attributes)])."""

    def __init__(self, *args, hidden: tuple[int, ...] = (64, 64), dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head = mlp([self.user_dim + self.item_dim, *hidden, 1], dropout)

    def score(self, user_vec: torch.Tensor, item_vec: torch.Tensor, context: Context | None = None,
              exclude_self: bool = False) -> torch.Tensor:
        # First layer on [user; item] = W_u user + W_i item + b: the user half once per user, not per item.
        first = self.head[0]
        du = user_vec.shape[-1]
        hidden = F.linear(item_vec, first.weight[:, du:]) + F.linear(user_vec, first.weight[:, :du], first.bias).unsqueeze(-2)
        return self.head[1:](hidden).squeeze(-1) + self.rating_center

    # ------------------------------------------------------------------ batched head (engine fast path)
    def batched_head_supported(self) -> bool:
        """True when the head is Linear / ReLU only (no dropout noise), so the batched head is exact."""
        return all(isinstance(m, (nn.Linear, nn.ReLU)) or (isinstance(m, nn.Dropout) and m.p == 0) for m in self.head)

    def _linear_names(self) -> list[tuple[str, str]]:
        return [(f"head.{i}.weight", f"head.{i}.bias") for i, m in enumerate(self.head) if isinstance(m, nn.Linear)]

    def split_head(self, params: Params) -> Params:
        """Head entries with the first weight as its user and item halves (also for learning rates)."""
        (w1, _), *_ = self._linear_names()
        out = {n: v for n, v in params.items() if n != w1}
        w = params[w1]
        out[w1 + USER_HALF], out[w1 + ITEM_HALF] = w[..., : self.user_dim], w[..., self.user_dim:]
        return out

    def merge_head(self, head: Params) -> Params:
        """Inverse of :meth:`split_head`."""
        (w1, _), *_ = self._linear_names()
        out = {n: v for n, v in head.items() if not n.startswith(w1 + ":")}
        out[w1] = torch.cat([head[w1 + USER_HALF], head[w1 + ITEM_HALF]], dim=-1)
        return out

    def _deep_forward(self, deep: Params, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Layers 2.. on the first layer's (post-ReLU) output: ratings [B, N] and each layer's input."""
        layers = self._linear_names()[1:]
        inputs = []
        for i, (wn, bn) in enumerate(layers):
            inputs.append(h)
            a = _linear(h, deep[wn]) + deep[bn].unsqueeze(-2)
            h = torch.relu(a) if i < len(layers) - 1 else a
        return h.squeeze(-1) + self.rating_center, inputs

    def _deep_backward(self, deep: Params, inputs: list[torch.Tensor], d_pred: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """Per-task gradients of sum(pred * d_pred) w.r.t. layers 2.. and w.r.t. the first layer's
        pre-activation ([B, N, h])."""
        layers = self._linear_names()[1:]
        grads: Params = {}
        delta = d_pred.unsqueeze(-1)  # [B, N, 1]
        for j in range(len(layers) - 1, -1, -1):
            wn, bn = layers[j]
            inp = inputs[j]  # [B, N, in], post-ReLU
            grads[wn] = torch.bmm(delta.transpose(1, 2), inp)  # [B, out, in]
            grads[bn] = delta.sum(1)
            w = deep[wn]
            if w.dim() == 3:
                back = torch.bmm(delta, w)
            elif w.shape[0] == 1:
                back = delta * w[0]
            else:
                back = delta @ w
            delta = torch.ops.aten.threshold_backward(back, inp, 0.0)  # ReLU': inp > 0 where its pre-activation is
        return grads, delta

    # explicit per-task weights (any per-parameter learning rates) ------------------------------
    def head_forward(self, head: Params, user_vec: torch.Tensor, item_vec: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Ratings [B, N] of ``item_vec`` ([B, N, d_i], or [N, d_i] shared by all tasks) for ``user_vec``
        [B, d_u] under split-layout head entries, per task (leading B) or shared."""
        (w1, b1), *_ = self._linear_names()
        wu, wi = head[w1 + USER_HALF], head[w1 + ITEM_HALF]
        c = (torch.bmm(wu, user_vec.unsqueeze(-1)).squeeze(-1) if wu.dim() == 3 else user_vec @ wu.t()) + head[b1]
        h1 = torch.relu(_linear(item_vec, wi) + c.unsqueeze(-2))
        pred, inputs = self._deep_forward(head, h1)
        return pred, [h1, *inputs]

    def head_backward(self, head: Params, user_vec: torch.Tensor, item_vec: torch.Tensor, cache: list,
                      d_pred: torch.Tensor) -> Params:
        """Per-task gradients of sum(pred * d_pred) w.r.t. every split-layout head entry."""
        (w1, b1), *_ = self._linear_names()
        grads, delta = self._deep_backward(head, cache[1:], d_pred)
        x = item_vec if item_vec.dim() == 3 else item_vec.expand(delta.shape[0], *item_vec.shape)
        grads[w1 + ITEM_HALF] = torch.bmm(delta.transpose(1, 2), x)
        dsum = delta.sum(1)
        grads[b1] = dsum
        grads[w1 + USER_HALF] = dsum.unsqueeze(-1) * user_vec.unsqueeze(-2)
        return grads

    # the inner loop ------------------------------------------------------------------------------
    def adapt_head(self, head: Params, user_vec: torch.Tensor, support_vec: torch.Tensor, support_rating: torch.Tensor,
                   masks: list[torch.Tensor], lr: float | Params, first_order: bool,
                   support_proj: torch.Tensor | None = None) -> HeadState:
        """``len(masks)`` steps of gradient descent on every task's masked support MSE, from the shared
        head ``head`` (model naming). ``lr``: a scalar, or per-parameter tensors (model naming).
        Differentiable w.r.t. ``head``, ``lr`` and the vectors; with ``first_order`` the inner gradients
        are constants (computed without a graph). ``support_proj``: support_vec @ W_item^T if known."""
        if not isinstance(lr, (int, float)):
            return self._adapt_explicit(head, user_vec, support_vec, support_rating, masks, lr, first_order)
        names = self._linear_names()
        (w1, b1) = names[0]
        w_user, w_item = head[w1][:, : self.user_dim], head[w1][:, self.user_dim:]
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
                proj = _linear(xs, layers[0].weight)
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
                pred = h.squeeze(-1) + self.rating_center
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

    def _adapt_explicit(self, head: Params, user_vec, support_vec, support_rating, masks, lr: Params,
                        first_order: bool) -> HeadState:
        fast = self.split_head(head)
        lrs = self.split_head(lr)
        for mask in masks:
            with torch.no_grad() if first_order else torch.enable_grad():
                cur = {n: v.detach() for n, v in fast.items()} if first_order else fast
                u = user_vec.detach() if first_order else user_vec
                xs = support_vec.detach() if first_order else support_vec
                pred, cache = self.head_forward(cur, u, xs)
                count = mask.sum(-1, keepdim=True).clamp(min=1.0)
                d_pred = (pred - support_rating) * mask * (2.0 / count)
                g = self.head_backward(cur, u, xs, cache, d_pred)
            fast = {n: p - lrs[n] * g[n] for n, p in fast.items()}
        return HeadState(explicit=fast, user_vec=user_vec)

    def predict_head(self, state: HeadState, item_vec: torch.Tensor, item_proj: torch.Tensor | None = None,
                     item_gram: torch.Tensor | None = None) -> torch.Tensor:
        """Ratings [B, N] of ``item_vec`` ([B, N, d_i] per task, or [N, d_i] shared) under adapted heads;
        ``item_proj``: item_vec @ W_item^T under the shared first weight, and ``item_gram``: item_vec @
        support_vec^T ([B, N, S]), when known."""
        if state.explicit is not None:
            return self.head_forward(state.explicit, state.user_vec, item_vec)[0]
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
        return h.squeeze(-1) + self.rating_center

    def project_items(self, head: Params, item_vec: torch.Tensor) -> torch.Tensor:
        """item_vec @ W_item^T under the (shared) head ``head``: the first layer's item half, reusable by
        :meth:`predict_head` (``item_proj``) for every user."""
        (w1, _), *_ = self._linear_names()
        return _linear(item_vec, head[w1][:, self.user_dim:])

    def head_params(self, state: HeadState, n_tasks: int) -> Params:
        """The adapted head as explicit per-task parameters (model naming, leading task dim)."""
        if state.explicit is not None:
            head = self.merge_head(state.explicit)
        else:
            names = self._linear_names()
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
        shapes = self._head_dims()
        return {n: (v if v.dim() > shapes[n] else v.expand(n_tasks, *v.shape)) for n, v in head.items()}

    def _head_dims(self) -> dict[str, int]:
        dims = self.__dict__.get("_head_dims_cache")
        if dims is None:
            dims = {n: p.dim() for n, p in self.named_parameters() if self.param_group(n)}
            self.__dict__["_head_dims_cache"] = dims
        return dims


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x @ w^T + b (shapes as :func:`_linear`; b [out] shared or [B, out] per task), with the bias fused
    into the product where one kernel can do both."""
    if w.dim() == 2 and b.dim() == 1:
        if x.dim() == 3:
            return torch.addmm(b, x.reshape(-1, x.shape[-1]), w.t()).view(*x.shape[:-1], w.shape[0])
        return torch.addmm(b, x, w.t())
    if w.dim() == 3 and x.dim() == 3 and w.shape[1] > 1:
        if w.shape[0] == 1 and x.shape[0] == 1:
            return torch.addmm(b.reshape(-1, w.shape[1])[-1], x[0], w[0].t()).unsqueeze(0)
        return torch.baddbmm(b.unsqueeze(-2), x, w.transpose(1, 2))
    return _linear(x, w) + b.unsqueeze(-2)


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T with x [B, N, in] or [N, in] and w [out, in] (shared) or [B, out, in] (per task)."""
    if w.dim() == 3:
        if w.shape[1] == 1 and x.shape[-2] <= 256:  # one output, few rows: a broadcast product beats a tiny bmm
            return (x * w).sum(-1, keepdim=True)
        if w.shape[1] == 1 and x.dim() == 3:  # one output, many rows (a catalogue): matrix-vector products
            return torch.bmm(x, w.transpose(1, 2))
        if w.shape[0] == 1 and x.dim() == 3 and x.shape[0] == 1:  # one task: a plain mm
            return (x[0] @ w[0].t()).unsqueeze(0)
        if x.dim() == 2:  # shared items, per-task weights: one product for all tasks
            out = x @ w.reshape(-1, w.shape[-1]).t()  # [N, B*out]
            return out.view(x.shape[0], w.shape[0], w.shape[1]).transpose(0, 1)
        return torch.bmm(x, w.transpose(1, 2))
    if x.dim() == 3:
        return (x.reshape(-1, x.shape[-1]) @ w.t()).view(*x.shape[:-1], w.shape[0])
    return x @ w.t()
