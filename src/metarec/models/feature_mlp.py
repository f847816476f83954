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

For one inner step with a scalar rate, :meth:`FeatureMLP.one_step_meta_gradient` goes one step further:
the forward runs without a graph and the meta-gradient (through the inner step, second or first order) is
a hand-written reverse pass, equations in its docstring.
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

    # the meta-gradient of one inner step, written out (engine fast path, no autograd) ------------
    def one_step_meta_gradient(self, head: Params, user_vec: torch.Tensor, item_vec: torch.Tensor,
                               support_inv: torch.Tensor, query_inv: torch.Tensor, support_rating: torch.Tensor,
                               support_weight: torch.Tensor, query_rating: torch.Tensor, query_weight: torch.Tensor,
                               first_order: bool) -> tuple[torch.Tensor, Params, torch.Tensor, torch.Tensor]:
        """Query loss of every task after one inner step from the shared head, and its gradient w.r.t.
        the head, the user vectors and the (distinct) item vectors, by a hand-written reverse pass.

        The same maths as ``adapt_head`` with one step (scalar lr) + ``predict_head`` + the weighted
        query MSE, differentiated by hand instead of by autograd (no graph is recorded; the caller
        backpropagates ``d_user`` / ``d_item`` into the embeddings). Per task (B tasks batched on dim 0;
        rows of X_S / X_Q are rows of the distinct item vectors X = ``item_vec`` [U, d_i] picked by
        ``support_inv`` / ``query_inv``), with layers l = 1..L, M_l = [Z_l > 0], s = |u|^2 + 1:

        support forward   P = X W_i^T (once per distinct item),  c = W_u u + b_1,
                          Z_1 = P_S + 1 c^T,  H_l = relu(Z_l),  Z_l = H_{l-1} W_l^T + 1 b_l^T (l >= 2),
                          p = Z_L + r0
        inner backward    e = g (p - y_S)  with g = ``support_weight`` = 2 alpha mask / count (lr folded),
                          D_L = e,  D_l = (D_{l+1} W_{l+1}) * M_l
        inner step        W_l' = W_l - D_l^T H_{l-1},  b_l' = b_l - 1^T D_l  (l >= 2),
                          W_i' = W_i - D_1^T X_S,  c' = c - s d_1  with d_1 = 1^T D_1
                          (W_u' u + b_1' with W_u' = W_u - d_1 u^T, b_1' = b_1 - d_1)
        query forward     Z_1q = P_Q - G D_1 + 1 c'^T  with G = X_Q X_S^T,
                          Z_lq = H_{l-1,q} W_l^T - K_l D_l + 1 b_l'^T  with K_l = H_{l-1,q} H_{l-1}^T,
                          loss = sum_q w_q (Z_Lq + r0 - y_q)^2,  w = ``query_weight``

        Reverse pass (A' denotes dloss/dA; sums over tasks for the shared parameters):

        query             Z_Lq' = 2 w (p_q - y_q);  for l = L..2, with R_l = Z_lq' D_l^T:
                          W_l' += Z_lq'^T H_{l-1,q},  b_l' += 1^T Z_lq',
                          H_{l-1,q}' = Z_lq' W_l - R_l H_{l-1},  Z_{l-1,q}' = H_{l-1,q}' * M_{l-1,q};
                          layer 1, R_1 = Z_1q' D_1^T:  P_Q' = Z_1q',  c' (adjoint) = 1^T Z_1q',
                          X_Q' = -R_1 X_S
        through the step  D_l' = -K_l^T Z_lq' - 1 (1^T Z_lq') (l >= 2),  H_{l-1}' = -R_l^T H_{l-1,q},
        (second order     D_1' = -G^T Z_1q' - s 1 (1^T Z_1q')^T,  X_S' = -R_1^T X_Q,
         only)            u' = -2 u (d_1 . c'_adjoint)    (first order: -u (d_1 . c'_adjoint) only, the
                          step's u being a constant where it multiplies d_1)
        inner backward    for l = 1..L-1:  T = D_l' * M_l,  D_{l+1}' += T W_{l+1}^T,  W_{l+1}' += D_{l+1}^T T;
                          p' = g e'  with e' = D_L'
        support           Z_L' = p';  for l = L..2:  W_l' += Z_l'^T H_{l-1},  b_l' += 1^T Z_l',
                          H_{l-1}' += Z_l' W_l,  Z_{l-1}' = H_{l-1}' * M_{l-1};  P_S' = Z_1',  c' += 1^T Z_1'
        first layer       b_1' = 1^T c',  W_u' = c'^T u,  u' += c' W_u,
                          W_i' = P'^T X,  X' = P' W_i + (X_S', X_Q' added into their distinct rows)

        With ``first_order`` the inner gradients are constants: only the query pass and the terms that
        reach W, c, u and X_Q through the adapted weights remain. Returns (loss, head gradients in model
        naming, d_user [B, d_u], d_item [U, d_i]).
        """
        names = self._linear_names()
        n_layers = len(names)
        (w1n, b1n) = names[0]
        du = self.user_dim
        w_user, w_item = head[w1n][:, :du], head[w1n][:, du:]
        ws = [head[wn] for wn, _ in names]
        bs = [head[bn] for _, bn in names]
        u, x = user_vec, item_vec
        n_tasks, s_len = support_inv.shape
        center = self.rating_center

        # ---- forward: support pass, inner backward, query pass through the stepped head
        proj = x @ w_item.t()  # [U, h1]
        c = torch.addmm(bs[0], u, w_user.t())  # [B, h1]
        xs, xq = _take(x, support_inv), _take(x, query_inv)
        hs = [_take(proj, support_inv).add_(c.unsqueeze(1)).relu_()]  # hs[i]: layer i + 1's output (post-ReLU)
        for i in range(1, n_layers):
            a = _affine(hs[i - 1], ws[i], bs[i])
            if i < n_layers - 1:
                hs.append(a.relu_())
        pred = a.squeeze(-1) + center
        err = (pred - support_rating) * support_weight  # e, [B, S]
        d = [None] * n_layers  # D_l
        d[-1] = err.unsqueeze(-1)
        for i in range(n_layers - 2, -1, -1):
            d[i] = _relu_back_(_back(d[i + 1], ws[i + 1]), hs[i])
        d1 = d[0].sum(1)
        uu = (u * u).sum(-1, keepdim=True) + 1.0  # s
        gram = torch.bmm(xq, xs.transpose(1, 2))  # G [B, Q, S]
        zq = torch.baddbmm(_take(proj, query_inv), gram, d[0], alpha=-1.0).add_((c - uu * d1).unsqueeze(1))
        hq, kq = [zq.relu_()], [gram]  # kq[i]: K_{i+1}
        for i in range(1, n_layers):
            k = torch.bmm(hq[i - 1], hs[i - 1].transpose(1, 2))
            kq.append(k)
            bias = bs[i] - d[i].sum(1)  # b_l' [B, out]
            a = torch.baddbmm(_linear(hq[i - 1], ws[i]), k, d[i], alpha=-1.0).add_(bias.unsqueeze(1))
            if i < n_layers - 1:
                hq.append(a.relu_())
        resid = a.squeeze(-1) + center - query_rating
        loss = (resid.square() * query_weight).sum()

        # ---- reverse: query pass (and, second order, through the step onto D and the support rows)
        grads: Params = {}
        second = not first_order
        d_bar = [None] * n_layers
        hs_bar = [None] * n_layers  # contributions to H_l' from the step
        zbar = (2.0 * query_weight * resid).unsqueeze(-1)  # Z_Lq'
        for i in range(n_layers - 1, 0, -1):
            wn, bn = names[i]
            grads[wn] = _flat(zbar).t() @ _flat(hq[i - 1])
            bq = zbar.sum(1)  # [B, out]
            grads[bn] = bq.sum(0)
            r = torch.bmm(zbar, d[i].transpose(1, 2))  # R_l [B, Q, S]
            h_bar = torch.baddbmm(_back(zbar, ws[i]), r, hs[i - 1], alpha=-1.0)
            if second:
                d_bar[i] = torch.bmm(kq[i].transpose(1, 2), zbar).neg_().sub_(bq.unsqueeze(1))
                hs_bar[i - 1] = torch.bmm(r.transpose(1, 2), hq[i - 1]).neg_()
            zbar = _relu_back_(h_bar, hq[i - 1])
        r1 = torch.bmm(zbar, d[0].transpose(1, 2))  # R_1
        c_bar = zbar.sum(1)  # the adjoint of c' (and of c)
        rows_bar = [zbar, torch.bmm(r1, xs).neg_()]  # query rows: P_Q', X_Q'
        u_bar = u * ((d1 * c_bar).sum(-1, keepdim=True) * (-2.0 if second else -1.0))
        if second:
            d_bar[0] = torch.bmm(gram.transpose(1, 2), zbar).neg_().sub_(uu.unsqueeze(1) * c_bar.unsqueeze(1))
            xs_bar = torch.bmm(r1.transpose(1, 2), xq).neg_()
            # inner backward, reversed
            for i in range(n_layers - 1):
                t = _relu_back_(d_bar[i], hs[i])
                d_bar[i + 1] = _add_linear(d_bar[i + 1], t, ws[i + 1])
                wn = names[i + 1][0]
                grads[wn] = grads[wn].addmm_(_flat(d[i + 1]).t(), _flat(t))
            # support pass
            zbar = d_bar[-1] * support_weight.unsqueeze(-1)  # p' = g e'
            for i in range(n_layers - 1, 0, -1):
                wn, bn = names[i]
                grads[wn] = grads[wn].addmm_(_flat(zbar).t(), _flat(hs[i - 1]))
                grads[bn] = grads[bn] + zbar.sum((0, 1))
                h_bar = _add_back(hs_bar[i - 1], zbar, ws[i])
                zbar = _relu_back_(h_bar, hs[i - 1])
            c_bar = c_bar + zbar.sum(1)
            p_bar = proj.new_zeros(proj.shape).index_add_(0, support_inv.reshape(-1), _flat(zbar))
            x_bar = x.new_zeros(x.shape).index_add_(0, support_inv.reshape(-1), _flat(xs_bar))
        else:
            p_bar, x_bar = proj.new_zeros(proj.shape), x.new_zeros(x.shape)
        # first layer: c = W_u u + b_1, P = X W_i^T; per-row adjoints summed into the distinct items
        p_bar = p_bar.index_add_(0, query_inv.reshape(-1), _flat(rows_bar[0]))
        x_bar = x_bar.index_add_(0, query_inv.reshape(-1), _flat(rows_bar[1]))
        grads[b1n] = c_bar.sum(0)
        grads[w1n] = torch.cat([c_bar.t() @ u, p_bar.t() @ x], 1)
        u_bar = u_bar.addmm_(c_bar, w_user)
        x_bar = x_bar.addmm_(p_bar, w_item)
        return loss, grads, u_bar, x_bar

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
        # Not baddbmm: it first copies the broadcast bias into a fresh [B, N, out] output (as long as
        # the product itself in the profile); adding it in place afterwards is 5-10 % faster.
        return torch.bmm(x, w.transpose(1, 2)).add_(b.unsqueeze(-2))
    return _linear(x, w) + b.unsqueeze(-2)


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] ([B, N, d]) for a 2-d table and a [B, N] index."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[B, N, d] -> [B * N, d]."""
    return x.reshape(-1, x.shape[-1])


def _relu_back_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * [out > 0] (the ReLU's backward, ``out`` its output), in place in ``grad``."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)


def _add_linear(acc: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """acc + x @ w^T for acc [B, N, out], x [B, N, in] and a shared w [out, in], in one kernel."""
    return torch.addmm(_flat(acc), _flat(x), w.t()).view(acc.shape)


def _add_back(acc: torch.Tensor, delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """acc + delta @ w for acc [B, N, in], delta [B, N, out] and a shared w [out, in], in one kernel."""
    if w.shape[0] == 1:
        return torch.addcmul(acc, delta, w[0])
    return torch.addmm(_flat(acc), _flat(delta), w).view(acc.shape)


def _back(delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """delta @ w for delta [B, N, out] and a shared w [out, in] (a broadcast product for one output)."""
    return delta * w[0] if w.shape[0] == 1 else _linear(delta, w.t())


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
