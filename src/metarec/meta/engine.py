"""The vectorised meta-learning engine: every task of a meta-batch in one ``vmap``-ed computation.

Notation as in MAML (Finn et al. 2017) and the seed: meta-parameters phi, a task T_i with support set
S_i and query set Q_i, inner learning rate alpha, outer learning rate beta, L2 weight lambda.

    inner loop      phi_i^(k+1) = phi_i^(k) - alpha * grad L_S_i(phi_i^(k)),   phi_i^(0) = phi
    meta-objective  L(phi)      = mean_i L_Q_i(phi_i^(K)) + lambda ||phi||^2
    outer step      phi        <- Adam(phi, grad L(phi), beta)

``maml`` backpropagates through the inner loop (exact second order, ``torch.func.grad`` composed with
autograd); ``fomaml`` treats the inner gradients as constants; ``metasgd`` replaces alpha by a learned
tensor per parameter; ``reptile`` uses (phi - mean_i phi_i^(K)) as the meta-gradient. Only parameters
in the ``adapt`` scope change in the inner loop; the rest (typically the embeddings) are evaluated once
per meta-batch outside it. The same maths written as a plain per-task loop lives in
:mod:`metarec.meta.reference`; the tests hold the two equal.

Fast path. When only head parameters adapt and the model has a batched head
(:meth:`FeatureMLP.adapt_head`, e.g. MeLU), ``vmap(grad(...))`` is replaced by the model's own batched
inner loop: per-task weights as a leading dimension (``bmm``), the support gradient written out with
differentiable ops (so the second-order meta-gradient is one ordinary backward, no double backward),
weight updates kept as low-rank factors while that is cheaper, and per-item work (attribute
embeddings, the first layer's item half) done once per distinct item of the meta-batch. Same maths,
same tests; ``self.fast`` says which path a learner takes. With one inner step and a scalar inner rate
(``maml`` / ``fomaml``, K = 1) the head's meta-gradient is also written out by hand
(:meth:`FeatureMLP.one_step_meta_gradient`, no autograd graph for the head; ``self.manual_backward``
turns it off), and ``meta_step`` calls the fused Adam kernel directly. See docs/performance.md.
"""

from __future__ import annotations

import logging
import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metarec.data.encoding import FeatureTable
from metarec.meta.config import MetaConfig
from metarec.models.base import Context, Params, RatingModel
from metarec.tasks.taskset import TaskBatch, rank_within

log = logging.getLogger(__name__)

Task = dict[str, object]  # one task's tensors (a pytree that vmap maps over)


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


def adapted_names(model: RatingModel, scope: str) -> list[str]:
    """Names of the parameters that adapt per task under ``scope`` (all / head / embeddings)."""
    groups = model.parameter_groups()
    if scope == "all":
        return groups["head"] + groups["embeddings"]
    return list(groups[scope])


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 2-d table and any index shape (index_select: faster than advanced indexing)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])


def _clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (2-norm over all gradients, scaled by
    min(1, max_norm / (norm + 1e-6))) without its per-call grouping of tensors by device and dtype,
    which costs more than the arithmetic for a model this size."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if len({(g.device, g.dtype) for g in grads}) > 1:  # pragma: no cover - mixed devices / dtypes
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)


def _fused_adam_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor],
                     max_norm: float | None) -> bool:
    """Clip ``grads`` as :func:`_clip_grad_norm` does, then ``optimizer.step()`` with them, by calling the
    fused Adam kernel directly on the optimiser's own state (the same kernel and arguments, without
    ``Optimizer.step``'s per-call bookkeeping). False (nothing done) unless ``optimizer`` is a plain
    fused Adam over exactly ``params`` whose state is initialised (its first step goes the usual way)."""
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
    if len({(g.device, g.dtype) for g in grads}) > 1:  # pragma: no cover - mixed devices / dtypes
        return False
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    if max_norm is not None:  # clip_grad_norm_'s arithmetic; a factor of 1 is skipped (x * 1.0 == x)
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if float(coef) < 1.0:
            grads = torch._foreach_mul(grads, coef)
    steps = [st["step"] for st in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], [],
                       steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                       grad_scale=None, found_inf=None)
    return True


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel over all parameters: ~2x faster than the per-tensor loop on CPU) when the
    parameters allow it."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - device / dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, foreach=True)


class MetaLearner:
    """Meta-parameters (the model's), optional learned inner rates, and the outer optimiser.

    ``user_features`` is the encoded user attribute table that tasks' ``user_idx`` index into.
    """

    def __init__(self, model: RatingModel, config: MetaConfig, user_features: FeatureTable) -> None:
        self.model = model
        self.config = config
        self.user_features = user_features
        self.adapted = adapted_names(model, config.adapt)
        if not self.adapted:
            raise ValueError(f"no parameters in adapt scope {config.adapt!r}")
        # Hoisting: when no embedding parameter adapts, user/item vectors are computed once per batch.
        self.hoist = not any(n in model.parameter_groups()["embeddings"] for n in self.adapted)
        # Fast path: a model with a batched head (per-task weights as a leading dim, hand-written support
        # gradient) replaces vmap(grad(...)) when only head parameters adapt (see _fast_state).
        head_names = set(model.parameter_groups()["head"])
        self.fast = (self.hoist and set(self.adapted) <= head_names
                     and bool(getattr(model, "batched_head_supported", lambda: False)()))
        # Hand-written meta-gradient (no autograd through the head) for one inner step with a scalar
        # rate, second or first order: see FeatureMLP.one_step_meta_gradient. ``manual_backward`` = False
        # forces the autograd path (the tests compare the two).
        self.manual_backward = True
        self._manual = (self.fast and config.inner_steps == 1 and config.algorithm in ("maml", "fomaml")
                        and config.query_loss == "squared"
                        and hasattr(model, "one_step_meta_gradient") and len(model._linear_names()) >= 2)
        params = model.params()
        self._params = dict(params)
        self.inner_lrs: dict[str, nn.Parameter] = {}
        if config.algorithm == "metasgd":
            self.inner_lrs = {
                n: nn.Parameter(torch.full_like(params[n], config.inner_lr)) for n in self.adapted
            }
        self.optimizer = _adam(self.meta_parameters(), config.outer_lr)

    # ------------------------------------------------------------------ parameters
    def _own_params(self) -> Params:
        """The model's parameters by name (the Parameter objects the optimiser holds; walking the
        module tree for them costs ~0.1 ms, so the dict is built once)."""
        return self._params

    def meta_parameters(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.inner_lrs.values()]

    def named_meta_parameters(self) -> dict[str, torch.Tensor]:
        out = dict(self._params)
        out.update({f"inner_lr.{n}": p for n, p in self.inner_lrs.items()})
        return out

    def _split(self, params: Params) -> tuple[Params, Params]:
        fast = {n: params[n] for n in self.adapted}
        frozen = {n: p for n, p in params.items() if n not in fast}
        return fast, frozen

    def _lr(self, name: str) -> torch.Tensor | float:
        return self.inner_lrs[name] if self.inner_lrs else self.config.inner_lr

    # ------------------------------------------------------------------ task inputs
    def task_inputs(self, batch: TaskBatch, params: Params, *, whole_task: bool = False,
                    users: FeatureTable | None = None) -> Task:
        """Tensors the per-task function needs, batched on dim 0. With hoisting, user and item vectors
        are computed here once (differentiably w.r.t. ``params``) instead of in every inner step.
        ``users`` gives the tasks' encoded user attributes directly (a served new user)."""
        by_index = users is None
        task: Task = {
            "support_item": batch.support_item, "support_rating": batch.support_rating, "support_mask": batch.support_mask,
            "query_item": batch.query_item, "query_rating": batch.query_rating, "query_mask": batch.query_mask,
        }
        if batch.support_prior is not None:  # a known user's history rows that set the prior (Context.prior)
            task["support_prior"] = batch.support_prior
        if whole_task:  # Reptile adapts on all of a task's ratings
            for part in ("item", "rating", "mask"):
                task[f"support_{part}"] = torch.cat([task[f"support_{part}"], task[f"query_{part}"]], dim=1)
            if "support_prior" in task:
                task["support_prior"] = torch.cat([task["support_prior"], torch.zeros_like(task["query_mask"])], dim=1)
        if self.hoist:
            own = self._own_params()
            if all(params[n] is p for n, p in own.items()):  # the module's own parameters: skip functional_call
                call = self.model
            else:
                call = lambda *args, **kw: functional_call(self.model, params, args, kw)  # noqa: E731
            users = self.user_features.select(batch.user_idx) if by_index else users
            user_vec = call("users", dict(users.single), dict(users.multi))
            if user_vec.dim() != 2 or user_vec.shape[0] != len(batch):  # no user attributes: [B, 0]
                user_vec = user_vec.new_zeros(len(batch), user_vec.shape[-1])
            task["user_vec"] = user_vec
            # support and query items in one embedding call, each distinct item once
            s = task["support_item"].shape[1]
            items, inverse = torch.unique(torch.cat([task["support_item"], task["query_item"]], dim=1), return_inverse=True)
            vec = call("items", items)
            task["support_vec"], task["query_vec"] = _rows(vec, inverse[:, :s]), _rows(vec, inverse[:, s:])
            if "support_prior" in task and self.model.uses_context:  # history rows, in new items' space
                task["support_prior_vec"] = _rows(call("items", items, as_new=True), inverse[:, :s])
            if self.fast:  # the distinct items' vectors, for per-item work done once (see _fast_meta_loss)
                task["item_vec"], task["support_inv"], task["query_inv"] = vec, inverse[:, :s], inverse[:, s:]
        else:
            users = self.user_features.select(batch.user_idx) if by_index else users
            task["user_single"] = dict(users.single)
            task["user_multi"] = dict(users.multi)
        return task

    def step_masks(self, batch_support_mask: torch.Tensor, steps: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """Per inner step, a random support mini-batch of ``support_batch_size`` real ratings per task."""
        size = self.config.support_batch_size
        if size is None or steps == 0:
            return None
        b, s = batch_support_mask.shape
        keys = torch.rand(steps, b, s, generator=generator).to(batch_support_mask.device)
        keys = keys.masked_fill(batch_support_mask.unsqueeze(0) == 0, 2.0)
        rank = keys.argsort(-1).argsort(-1)
        return ((rank < size) & (batch_support_mask.unsqueeze(0) > 0)).to(batch_support_mask.dtype).transpose(0, 1)

    # ------------------------------------------------------------------ pure per-task functions
    def _predict(self, params: Params, task: Task, which: str) -> torch.Tensor:
        """Predicted ratings of the task's ``which`` (support / query) items under ``params``."""
        call, user, context = self._user_and_context(params, task)
        if f"{which}_vec" in task:  # hoisted
            items = task[f"{which}_vec"]
        elif which == "support" and context is not None:  # the support vectors were just computed
            items = context.item_vec
        else:
            items = call("items", task[f"{which}_item"], vmap_safe=True)
        return call("score", user, items, context, exclude_self=(which == "support"))

    def _adapt_one(self, fast: Params, frozen: Params, task: Task, steps: int, first_order: bool,
                   lrs: dict[str, torch.Tensor] | None) -> Params:
        """K inner steps of gradient descent on one task's support loss."""
        masks = task.get("step_masks")

        def support_loss(fast_params: Params, mask: torch.Tensor) -> torch.Tensor:
            pred = self._predict({**frozen, **fast_params}, task, "support")
            return masked_mse(pred, task["support_rating"], mask)

        for k in range(steps):
            mask = task["support_mask"] if masks is None else masks[k]
            g = grad(support_loss)(fast, mask)
            if first_order:
                g = {n: v.detach() for n, v in g.items()}
            fast = {n: p - (lrs[n] if lrs else self.config.inner_lr) * g[n] for n, p in fast.items()}
        return fast

    def _query_loss_one(self, fast: Params, frozen: Params, task: Task, steps: int, first_order: bool,
                        lrs: dict[str, torch.Tensor] | None) -> torch.Tensor:
        adapted = self._adapt_one(fast, frozen, task, steps, first_order, lrs)
        pred = self._predict({**frozen, **adapted}, task, "query")
        return masked_loss(pred, task["query_rating"], task["query_mask"], self.config.query_loss)

    def _user_and_context(self, params: Params | None, task: Task):
        """One task's user vector and support context (hoisted in ``task`` or computed under ``params``;
        ``None``: the module's own parameters, called directly - also on a whole batch)."""
        call = self.model if params is None else (lambda *args, **kw: functional_call(self.model, params, args, kw))  # noqa: E731
        if "user_vec" in task:
            user, support = task["user_vec"], task["support_vec"]
        else:
            user = call("users", task["user_single"], task["user_multi"], vmap_safe=True)
            support = call("items", task["support_item"], vmap_safe=True) if self.model.uses_context else None
        prior_vec = task.get("support_prior_vec")
        if prior_vec is None and "support_prior" in task and self.model.uses_context:  # not hoisted
            prior_vec = call("items", task["support_item"], vmap_safe=True, as_new=True)
        context = (Context(support, task["support_rating"], task["support_mask"], task.get("support_prior"), prior_vec)
                   if self.model.uses_context else None)
        return call, user, context

    def _predict_items(self, params: Params, task: Task, items: torch.Tensor, item_vec: torch.Tensor | None) -> torch.Tensor:
        """Predicted ratings of arbitrary ``items`` (shared by all tasks) for one task's user."""
        call, user, context = self._user_and_context(params, task)
        if item_vec is None:
            item_vec = call("items", items, vmap_safe=True)
        return call("score", user, item_vec, context)


    # ------------------------------------------------------------------ fast path (batched head)
    def _fast_state(self, params: Params, task: Task, steps: int, first_order: bool, *, detach_lrs: bool = False,
                    support: str = "support", support_proj: torch.Tensor | None = None):
        """Every task's adapted head at once (the model's batched inner loop)."""
        head = {n: params[n] for n in self.adapted}
        if self.inner_lrs:
            lr = {n: (v.detach() if detach_lrs else v) for n, v in self.inner_lrs.items()}
        else:
            lr = self.config.inner_lr
        mask = task[f"{support}_mask"]
        masks = task.get("step_masks")
        per_step = [mask if masks is None else masks[:, k] for k in range(steps)]
        return self.model.adapt_head(head, task["user_vec"], task[f"{support}_vec"], task[f"{support}_rating"],
                                     per_step, lr, first_order, support_proj=support_proj)

    def _fast_meta_loss(self, params: Params, task: Task) -> torch.Tensor:
        # the first layer's item half once per distinct item of the batch, not once per rating
        proj = self.model.project_items(params, task["item_vec"]) if "item_vec" in task else None
        state = self._fast_state(params, task, self.config.inner_steps, self.config.first_order,
                                 support_proj=None if proj is None else _rows(proj, task["support_inv"]))
        pred = self.model.predict_head(state, task["query_vec"], None if proj is None else _rows(proj, task["query_inv"]))
        # mean over tasks of the masked query loss, as one weighted sum (weights: mask / (count * B))
        mask = task["query_mask"]
        weight = mask / (mask.sum(-1, keepdim=True).clamp(min=1.0) * mask.shape[0])
        return (pointwise_loss(pred - task["query_rating"], self.config.query_loss) * weight).sum()

    # ------------------------------------------------------------------ batched
    def meta_loss(self, batch: TaskBatch, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean_i L_Q_i(phi_i^(K)) + lambda ||phi||^2 for one meta-batch (differentiable w.r.t. phi)."""
        if self.config.algorithm == "reptile":
            raise ValueError("reptile has no meta-loss; use meta_gradients")
        params = self._own_params()
        task = self.task_inputs(batch, params)
        masks = self.step_masks(batch.support_mask, self.config.inner_steps, generator)
        if masks is not None:
            task["step_masks"] = masks
        if self.fast:
            loss = self._fast_meta_loss(params, task)
            return loss + self.l2_penalty(params) if self.config.l2 else loss
        fast, frozen = self._split(params)
        lrs = dict(self.inner_lrs) or None
        steps, first_order = self.config.inner_steps, self.config.first_order

        def per_task(fast_, frozen_, lrs_, task_):
            return self._query_loss_one(fast_, frozen_, task_, steps, first_order, lrs_)

        losses = vmap(per_task, in_dims=(None, None, None, 0), randomness="different")(fast, frozen, lrs, task)
        return losses.mean() + self.l2_penalty(params)

    def l2_penalty(self, params: Params) -> torch.Tensor:
        if self.config.l2 == 0:
            return torch.zeros((), device=next(iter(params.values())).device)
        return self.config.l2 * sum((p**2).sum() for p in params.values())

    def meta_gradients(self, batch: TaskBatch, *, generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], float]:
        """The meta-gradient of every meta-parameter (and the loss it came from)."""
        named = self.named_meta_parameters()
        if self.config.algorithm == "reptile":
            return self._reptile_gradients(batch, generator)
        if self._manual and self.manual_backward:
            return self._manual_meta_gradients(batch, generator)
        loss = self.meta_loss(batch, generator=generator)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named.items(), grads)}, float(loss.detach())

    def _manual_meta_gradients(self, batch: TaskBatch, generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], float]:
        """:meth:`meta_gradients` for one inner step on the batched head: the head's forward and
        reverse pass written out (:meth:`FeatureMLP.one_step_meta_gradient`, no graph recorded), then
        one autograd backward through the embeddings only (user and distinct item vectors)."""
        params = self._own_params()
        model = self.model
        uf, idx = self.user_features, batch.user_idx  # FeatureTable.select's rows, by index_select (cheaper)
        user_vec = model.embed_users({k: v.index_select(0, idx) for k, v in uf.single.items()},
                                     {k: v.index_select(0, idx) for k, v in uf.multi.items()})
        s = batch.support_item.shape[1]
        items, inverse = torch.unique(torch.cat([batch.support_item, batch.query_item], dim=1), return_inverse=True)
        item_vec = model.embed_items(items)
        mask = batch.support_mask
        masks = self.step_masks(mask, 1, generator)
        if masks is not None:
            mask = masks[:, 0]
        support_weight = mask * (2.0 * self.config.inner_lr / mask.sum(-1, keepdim=True).clamp(min=1.0))
        q_mask = batch.query_mask
        query_weight = q_mask / (q_mask.sum(-1, keepdim=True).clamp(min=1.0) * q_mask.shape[0])
        head = {n: params[n].detach() for n in self.adapted}
        with torch.no_grad():
            loss, head_grads, d_user, d_item = model.one_step_meta_gradient(
                head, user_vec.detach(), item_vec.detach(), inverse[:, :s], inverse[:, s:], batch.support_rating,
                support_weight, batch.query_rating, query_weight, self.config.first_order)
        rest = [n for n in params if n not in head_grads]
        outputs = [(v, g) for v, g in ((user_vec, d_user), (item_vec, d_item)) if v.requires_grad]
        found = torch.autograd.grad([v for v, _ in outputs], [params[n] for n in rest], [g for _, g in outputs],
                                    allow_unused=True) if outputs and rest else [None] * len(rest)
        grads = dict(head_grads)
        grads.update({n: (torch.zeros_like(params[n]) if g is None else g) for n, g in zip(rest, found)})
        grads = {n: grads[n] for n in params}  # model order
        loss = float(loss)
        if self.config.l2:
            with torch.no_grad():
                loss += float(self.l2_penalty(params))
                for n, p in params.items():
                    grads[n] = grads[n] + 2 * self.config.l2 * p
        return grads, loss

    def _reptile_gradients(self, batch: TaskBatch, generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], float]:
        """Reptile: grad = phi - mean_i phi_i^(K) for adapted parameters, + 2 lambda phi for all."""
        with torch.no_grad():
            params = {n: p.detach() for n, p in self.model.named_parameters()}
            task = self.task_inputs(batch, self._own_params(), whole_task=True)
            masks = self.step_masks(task["support_mask"], self.config.inner_steps, generator)
            if masks is not None:
                task["step_masks"] = masks
            fast, frozen = self._split(params)
            steps = self.config.inner_steps
            if self.fast:
                state = self._fast_state(params, task, steps, True)
                pred = self.model.predict_head(state, task["support_vec"])
                losses = masked_mse(pred, task["support_rating"], task["support_mask"])
                adapted = self.model.head_params(state, len(batch))
                grads = {n: torch.zeros_like(p) for n, p in params.items()}
                for n in self.adapted:
                    grads[n] = params[n] - adapted[n].mean(0)
                if self.config.l2:
                    for n, p in params.items():
                        grads[n] = grads[n] + 2 * self.config.l2 * p
                return grads, float(losses.mean())

            def per_task(fast_, frozen_, task_):
                adapted = self._adapt_one(fast_, frozen_, task_, steps, True, None)
                loss = masked_mse(self._predict({**frozen_, **adapted}, task_, "support"), task_["support_rating"], task_["support_mask"])
                return adapted, loss

            adapted, losses = vmap(per_task, in_dims=(None, None, 0), randomness="different")(fast, frozen, task)
            grads = {n: torch.zeros_like(p) for n, p in params.items()}
            for n in self.adapted:
                grads[n] = params[n] - adapted[n].mean(0)
            if self.config.l2:
                for n, p in params.items():
                    grads[n] = grads[n] + 2 * self.config.l2 * p
        return grads, float(losses.mean())

    def meta_step(self, batch: TaskBatch, *, generator: torch.Generator | None = None) -> float:
        """One outer update of phi from one meta-batch; returns the meta-batch loss."""
        if not self.model.training:
            self.model.train()
        grads, loss = self.meta_gradients(batch, generator=generator)
        named = self.named_meta_parameters()
        if _fused_adam_step(self.optimizer, list(named.values()), [grads[n] for n in named], self.config.grad_clip):
            return loss
        for n, p in named.items():
            p.grad = grads[n]
        if self.config.grad_clip is not None:
            _clip_grad_norm(list(named.values()), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    # ------------------------------------------------------------------ using the meta-learned model
    def adapt(self, batch: TaskBatch, steps: int | None = None, users: FeatureTable | None = None) -> tuple[Params, Task]:
        """Personalised parameters of every task in ``batch`` (adapted entries carry a leading task dim)."""
        steps = self.config.test_steps if steps is None else steps
        own = self._own_params()
        params = {n: p.detach() for n, p in own.items()}
        with torch.no_grad():  # the module's own parameters (no functional_call), nothing recorded
            task = self.task_inputs(batch, own, users=users)
        fast, frozen = self._split(params)
        if self.fast:
            with torch.no_grad():
                state = self._fast_state(params, task, steps, True, detach_lrs=True)
                adapted = self.model.head_params(state, len(batch))
            # predict_query / predict_items reuse the adapted head in its compact (low-rank) form
            task["head_state"], task["head_params"] = state, adapted
            return adapted, task
        if steps == 0:  # nothing to adapt (a closed-form fold-in, if any, happens when scoring): views, no vmap
            return {n: p.unsqueeze(0).expand(len(batch), *p.shape) for n, p in fast.items()}, task
        lrs = {n: v.detach() for n, v in self.inner_lrs.items()} or None
        adapted = vmap(lambda f, fr, lr_, t: self._adapt_one(f, fr, t, steps, True, lr_), in_dims=(None, None, None, 0), randomness="different")(
            fast, frozen, lrs, task
        )
        adapted = {n: v.detach() for n, v in adapted.items()}
        return adapted, task

    def predict_query(self, batch: TaskBatch, steps: int | None = None) -> torch.Tensor:
        """Query predictions [B, Q] after ``steps`` inner steps on each task's support set (0: none)."""
        if self.model.training:
            self.model.eval()
        adapted, task = self.adapt(batch, steps)
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in adapted}
        with torch.no_grad():
            if self.fast:
                pred = self.model.predict_head(task["head_state"], task["query_vec"])
                low, high = self.model.rating_scale
                return pred.clamp(low, high)
            pred = vmap(lambda a, fr, t: self._predict({**fr, **a}, t, "query"), in_dims=(0, None, 0), randomness="different")(adapted, frozen, task)
        low, high = self.model.rating_scale
        return pred.clamp(low, high)

    def catalogue_vectors(self, items: torch.Tensor) -> torch.Tensor | None:
        """Item vectors under the meta-parameters (reusable across users when embeddings do not adapt)."""
        if not self.hoist:
            return None
        with torch.no_grad():
            return functional_call(self.model, dict(self.model.named_parameters()), ("items", items))

    def catalogue_projection(self, item_vec: torch.Tensor | None) -> torch.Tensor | None:
        """What the batched head can precompute from catalogue vectors under the meta-parameters (the
        first layer's item half applied to every item), for :meth:`predict_items`; None without it."""
        if not self.fast or item_vec is None:
            return None
        with torch.no_grad():
            return self.model.project_items(self._own_params(), item_vec)

    def catalogue_gram(self, item_vec: torch.Tensor | None, max_items: int = 6000) -> torch.Tensor | None:
        """item_vec @ item_vec^T for the whole catalogue ([N, N], N <= ``max_items``): with it the batched
        head scores items against a user's support set by a lookup instead of a product (see
        :meth:`predict_items`); None without a batched head or for a larger catalogue."""
        if not self.fast or item_vec is None or item_vec.shape[0] > max_items:
            return None
        with torch.no_grad():
            return item_vec @ item_vec.t()

    def predict_items(self, adapted: Params, task: Task, items: torch.Tensor, item_vec: torch.Tensor | None = None,
                      item_proj: torch.Tensor | None = None, catalogue_gram: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [B, N] of ``items`` for every adapted task (the full-catalogue call). ``item_proj``:
        :meth:`catalogue_projection` of ``item_vec`` and ``catalogue_gram``: :meth:`catalogue_gram` of the
        catalogue's vectors (``items`` index its rows), when cached."""
        if self.model.training:
            self.model.eval()
        if item_vec is None:
            item_vec = self.catalogue_vectors(items)
        with torch.no_grad():
            if self.fast:
                n_tasks, n_items = len(task["user_vec"]), item_vec.shape[-2]
                # items in chunks: every chunk's [B, chunk, max(S, 64)] intermediates stay within ~4 MB
                # (large fresh allocations cost page faults, more than the products themselves)
                width = n_tasks * max(task["support_item"].shape[-1], 64)
                chunk = max(32, (1 << 20) // width)
                preds = []
                compact = task.get("head_params") is adapted  # straight from adapt(): its compact form
                support = task["support_item"]
                lookup = compact and catalogue_gram is not None and item_vec.dim() == 2
                whole = lookup and n_items == catalogue_gram.shape[0] and bool(
                    (items == torch.arange(n_items, device=items.device)).all())
                for lo in range(0, n_items, chunk):
                    vec = item_vec[..., lo:lo + chunk, :]
                    proj = None if item_proj is None else item_proj[..., lo:lo + chunk, :]
                    if compact:
                        gram = None  # item . support vector products [B, n, S], looked up in the Gram matrix
                        if whole:  # symmetric: the support items' rows of this column block
                            block = catalogue_gram[:, lo:lo + chunk].index_select(0, support.reshape(-1))
                            gram = block.view(*support.shape, -1).transpose(1, 2)
                        elif lookup:
                            rows = catalogue_gram.index_select(0, items[lo:lo + chunk])
                            gram = rows.index_select(1, support.reshape(-1)).view(rows.shape[0], *support.shape).permute(1, 0, 2)
                        preds.append(self.model.predict_head(task["head_state"], vec, proj, gram))
                    else:
                        preds.append(self.model.head_forward(self.model.split_head(adapted), task["user_vec"], vec)[0])
                pred = preds[0] if len(preds) == 1 else torch.cat(preds, dim=-1)
                low, high = self.model.rating_scale
                return pred.clamp(low, high)
            if hasattr(self.model, "user_weights") and item_vec is not None and item_vec.dim() == 2:
                # a model linear in the item vector (NeuralCF): each user's (w, c), then one product
                w, c = self.user_weights(adapted, task)
                pred = self.model.score_with_weights(w, c, item_vec)
            else:
                frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in adapted}
                pred = vmap(lambda a, fr, t: self._predict_items({**fr, **a}, t, items, item_vec), in_dims=(0, None, 0),
                            randomness="different")(adapted, frozen, task)
        low, high = self.model.rating_scale
        return pred.clamp(low, high)

    def user_weights(self, adapted: Params, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Every adapted task's (w [B, F], c [B]) of a model linear in the item vector (NeuralCF):
        score(v) = q_v . w + b_v + c. Nothing adapted (adapt(steps=0)'s views) and vectors hoisted: one
        batched call, no vmap."""
        with torch.no_grad():
            unadapted = all(v.dim() > 0 and v.stride(0) == 0 for v in adapted.values())
            if unadapted and "user_vec" in task:
                return self._user_weights(None, task)
            frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in adapted}
            return vmap(lambda a, fr, t: self._user_weights({**fr, **a}, t), in_dims=(0, None, 0),
                        randomness="different")(adapted, frozen, task)

    def _user_weights(self, params: Params | None, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's (w, c) of a model linear in the item vector (see ``NeuralCF.user_weights``)."""
        call, user, context = self._user_and_context(params, task)
        return call("user_weights", user, context)

    def predict_tasks(self, tasks, steps: int | None = None, batch_size: int = 256,
                      max_batch_ratings: int = 262_144) -> np.ndarray:
        """Every query rating's prediction after adapting on its task's support set, flat in the order of
        ``tasks.query_item`` (task by task).

        Tasks go in order of support length, so a batch's tasks pad to about the same width. A batch
        holds at most ``batch_size`` tasks and about ``max_batch_ratings`` support ratings: a known user's
        whole history can be a support set of a thousand ratings."""
        out = np.empty(int(tasks.query_sizes.sum()), dtype=np.float64)
        for idx, batch in self.task_batches(tasks, batch_size, max_batch_ratings):
            pred = self.predict_query(batch, steps)[batch.query_mask > 0].detach().cpu().numpy()
            # the rows' real query entries, row by row, are each task's query in order
            lengths = tasks.query_sizes[idx]
            out[np.repeat(tasks.query_ptr[idx], lengths) + rank_within(np.repeat(idx, lengths))] = pred
        return out

    def task_batches(self, tasks, batch_size: int = 256, max_batch_ratings: int = 262_144):
        """``(task indices, TaskBatch on the model's device)`` covering ``tasks`` once, in order of support
        length (a batch's tasks pad to about the same width), at most ``batch_size`` tasks and about
        ``max_batch_ratings`` support ratings per batch."""
        n = len(tasks)
        if n == 0:
            return
        device = next(self.model.parameters()).device
        packed = tasks.packed()
        sizes = tasks.support_sizes
        order = np.argsort(sizes, kind="stable")
        i = 0
        while i < n:
            widest = max(1, int(sizes[order[min(i + batch_size, n) - 1]]))
            idx = order[i : i + max(1, min(batch_size, max_batch_ratings // widest))]
            yield idx, packed.select(torch.as_tensor(idx, dtype=torch.long)).to(device)
            i += len(idx)

    def evaluate(self, tasks, steps: int | None = None, batch_size: int = 256) -> dict[str, float]:
        """Query MAE / RMSE over a TaskSet, rating-weighted (every query rating counts once)."""
        pred = self.predict_tasks(tasks, steps, batch_size)
        if not len(pred):
            return {"mae": float("nan"), "rmse": float("nan"), "n": 0}
        err = pred - tasks.query_rating.astype(np.float64)
        return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())), "n": int(len(err))}
