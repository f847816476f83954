"""The batched head's linear algebra: every task's adapted layer as a shared weight plus low-rank factors,
every task's adapted head as such layers (:class:`HeadState`), and the small product helpers the
hand-written passes share (per-task weights as a leading dimension)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from metarec.models.base import Params


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
    _dense: torch.Tensor | None = field(default=None, repr=False, compare=False)  # dense(), when kept

    def apply(self, inp: torch.Tensor, proj: torch.Tensor | None = None, gram: torch.Tensor | None = None) -> torch.Tensor:
        """inp [B, N, in] (or [N, in] shared) -> [B, N, out]. ``proj``: inp @ weight^T and ``gram``:
        inp @ x^T, when already known."""
        if self.a is not None and gram is None:
            # the factors cost n r (in + out); a dense per-task weight r in out to build, plus n in out
            # to apply where the shared projection ``proj`` would otherwise have been reused
            n, rank = inp.shape[-2], self.a.shape[1]
            n_out, n_in = self.weight.shape[-2:]
            if rank * n_in * n_out + (n * n_in * n_out if proj is not None else 0) < n * rank * (n_in + n_out):
                return affine(inp, self.dense(), self.bias)
        if self.a is None:
            return affine(inp, self.weight, self.bias) if proj is None else proj + self.bias.unsqueeze(-2)
        if gram is None:
            gram = linear(inp, self.x)  # inp @ x^T: [B, n, r]
        low_rank = torch.matmul(gram, self.a)
        base = linear(inp, self.weight) if proj is None else proj
        if not torch.is_grad_enabled() and low_rank.shape[-2:] == base.shape[-2:]:  # serving: fewer temporaries
            return low_rank.neg_().add_(base).add_(self.bias.unsqueeze(-2))
        return base + self.bias.unsqueeze(-2) - low_rank

    def back(self, delta: torch.Tensor) -> torch.Tensor:
        """Gradient at the input from the gradient ``delta`` [B, N, out] at the output."""
        d = input_gradient(delta, self.weight)
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
        """The per-task weight with the factors folded in; kept when computed without a graph (serving asks
        for it twice: the explicit parameters and the catalogue's scores)."""
        if self.a is None:
            return self.weight
        if self._dense is not None:
            return self._dense
        w = self.weight - torch.bmm(self.a.transpose(1, 2), self.x)
        if not torch.is_grad_enabled():
            self._dense = w
        return w




def affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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
    return linear(x, w) + b.unsqueeze(-2)


def input_gradient(delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """delta @ w: a linear layer's input gradient from its output gradient ``delta`` [B, N, out], for a
    weight ``w`` shared ([out, in]) or per task ([B, out, in]); a broadcast product for one output."""
    if w.dim() == 3:
        return torch.bmm(delta, w)
    if w.shape[0] == 1:
        return delta * w[0]
    return delta @ w


def take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] ([B, N, d]) for a 2-d table and a [B, N] index."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])


def flat(x: torch.Tensor) -> torch.Tensor:
    """[B, N, d] -> [B * N, d]."""
    return x.reshape(-1, x.shape[-1])


def relu_back_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * [out > 0] (the ReLU's backward, ``out`` its output), in place in ``grad``."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)


def add_linear(acc: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """acc + x @ w^T for acc [B, N, out], x [B, N, in] and a shared w [out, in], in one kernel."""
    return torch.addmm(flat(acc), flat(x), w.t()).view(acc.shape)


def add_back(acc: torch.Tensor, delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """acc + delta @ w for acc [B, N, in], delta [B, N, out] and a shared w [out, in], in one kernel."""
    if w.shape[0] == 1:
        return torch.addcmul(acc, delta, w[0])
    return torch.addmm(flat(acc), flat(delta), w).view(acc.shape)


def back_linear(delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """delta @ w for delta [B, N, out] and a shared w [out, in] (a broadcast product for one output)."""
    return delta * w[0] if w.shape[0] == 1 else linear(delta, w.t())


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
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
