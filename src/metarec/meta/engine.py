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
from metarec.tasks.taskset import TaskBatch

log = logging.getLogger(__name__)

Task = dict[str, object]  # one task's tensors (a pytree that vmap maps over)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (mask = 1) entries; 0 for an empty set."""
    return ((pred - target) ** 2 * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def adapted_names(model: RatingModel, scope: str) -> list[str]:
    """Names of the parameters that adapt per task under ``scope`` (all / head / embeddings)."""
    groups = model.parameter_groups()
    if scope == "all":
        return groups["head"] + groups["embeddings"]
    return list(groups[scope])


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
        params = model.params()
        self.inner_lrs: dict[str, nn.Parameter] = {}
        if config.algorithm == "metasgd":
            self.inner_lrs = {
                n: nn.Parameter(torch.full_like(params[n], config.inner_lr)) for n in self.adapted
            }
        self.optimizer = torch.optim.Adam(self.meta_parameters(), lr=config.outer_lr)

    # ------------------------------------------------------------------ parameters
    def meta_parameters(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.inner_lrs.values()]

    def named_meta_parameters(self) -> dict[str, torch.Tensor]:
        out = dict(self.model.named_parameters())
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
        if users is None:
            users = self.user_features.select(batch.user_idx)
        task: Task = {
            "support_item": batch.support_item, "support_rating": batch.support_rating, "support_mask": batch.support_mask,
            "query_item": batch.query_item, "query_rating": batch.query_rating, "query_mask": batch.query_mask,
        }
        if whole_task:  # Reptile adapts on all of a task's ratings
            for part in ("item", "rating", "mask"):
                task[f"support_{part}"] = torch.cat([task[f"support_{part}"], task[f"query_{part}"]], dim=1)
        if self.hoist:
            call = lambda *args: functional_call(self.model, params, args)  # noqa: E731
            task["user_vec"] = call("users", dict(users.single), dict(users.multi))
            task["support_vec"] = call("items", task["support_item"])
            task["query_vec"] = call("items", task["query_item"])
        else:
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
        call = lambda *args, **kw: functional_call(self.model, params, args, kw)  # noqa: E731
        if "user_vec" in task:
            user, items, support = task["user_vec"], task[f"{which}_vec"], task["support_vec"]
        else:
            user = call("users", task["user_single"], task["user_multi"], vmap_safe=True)
            items = call("items", task[f"{which}_item"], vmap_safe=True)
            support = items if which == "support" else (
                call("items", task["support_item"], vmap_safe=True) if self.model.uses_context else None
            )
        context = Context(support, task["support_rating"], task["support_mask"]) if self.model.uses_context else None
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
        return masked_mse(pred, task["query_rating"], task["query_mask"])

    def _predict_items(self, params: Params, task: Task, items: torch.Tensor, item_vec: torch.Tensor | None) -> torch.Tensor:
        """Predicted ratings of arbitrary ``items`` (shared by all tasks) for one task's user."""
        call = lambda *args, **kw: functional_call(self.model, params, args, kw)  # noqa: E731
        if "user_vec" in task:
            user, support = task["user_vec"], task["support_vec"]
        else:
            user = call("users", task["user_single"], task["user_multi"], vmap_safe=True)
            support = call("items", task["support_item"], vmap_safe=True) if self.model.uses_context else None
        if item_vec is None:
            item_vec = call("items", items, vmap_safe=True)
        context = Context(support, task["support_rating"], task["support_mask"]) if self.model.uses_context else None
        return call("score", user, item_vec, context)

    # ------------------------------------------------------------------ batched
    def meta_loss(self, batch: TaskBatch, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean_i L_Q_i(phi_i^(K)) + lambda ||phi||^2 for one meta-batch (differentiable w.r.t. phi)."""
        if self.config.algorithm == "reptile":
            raise ValueError("reptile has no meta-loss; use meta_gradients")
        params = self.model.params()
        task = self.task_inputs(batch, params)
        masks = self.step_masks(batch.support_mask, self.config.inner_steps, generator)
        if masks is not None:
            task["step_masks"] = masks
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
        loss = self.meta_loss(batch, generator=generator)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named.items(), grads)}, float(loss.detach())

    def _reptile_gradients(self, batch: TaskBatch, generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], float]:
        """Reptile: grad = phi - mean_i phi_i^(K) for adapted parameters, + 2 lambda phi for all."""
        with torch.no_grad():
            params = {n: p.detach() for n, p in self.model.named_parameters()}
            task = self.task_inputs(batch, params, whole_task=True)
            masks = self.step_masks(task["support_mask"], self.config.inner_steps, generator)
            if masks is not None:
                task["step_masks"] = masks
            fast, frozen = self._split(params)
            steps = self.config.inner_steps

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
        self.model.train()
        grads, loss = self.meta_gradients(batch, generator=generator)
        named = self.named_meta_parameters()
        for n, p in named.items():
            p.grad = grads[n]
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(list(named.values()), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    # ------------------------------------------------------------------ using the meta-learned model
    def adapt(self, batch: TaskBatch, steps: int | None = None, users: FeatureTable | None = None) -> tuple[Params, Task]:
        """Personalised parameters of every task in ``batch`` (adapted entries carry a leading task dim)."""
        steps = self.config.test_steps if steps is None else steps
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        with torch.no_grad():
            task = self.task_inputs(batch, params, users=users)
        fast, frozen = self._split(params)
        lrs = {n: v.detach() for n, v in self.inner_lrs.items()} or None
        adapted = vmap(lambda f, fr, lr_, t: self._adapt_one(f, fr, t, steps, True, lr_), in_dims=(None, None, None, 0), randomness="different")(
            fast, frozen, lrs, task
        )
        adapted = {n: v.detach() for n, v in adapted.items()}
        return adapted, task

    def predict_query(self, batch: TaskBatch, steps: int | None = None) -> torch.Tensor:
        """Query predictions [B, Q] after ``steps`` inner steps on each task's support set (0: none)."""
        self.model.eval()
        adapted, task = self.adapt(batch, steps)
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in adapted}
        with torch.no_grad():
            pred = vmap(lambda a, fr, t: self._predict({**fr, **a}, t, "query"), in_dims=(0, None, 0), randomness="different")(adapted, frozen, task)
        low, high = self.model.rating_scale
        return pred.clamp(low, high)

    def catalogue_vectors(self, items: torch.Tensor) -> torch.Tensor | None:
        """Item vectors under the meta-parameters (reusable across users when embeddings do not adapt)."""
        if not self.hoist:
            return None
        with torch.no_grad():
            return functional_call(self.model, dict(self.model.named_parameters()), ("items", items))

    def predict_items(self, adapted: Params, task: Task, items: torch.Tensor, item_vec: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [B, N] of ``items`` for every adapted task (the full-catalogue call)."""
        self.model.eval()
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in adapted}
        if item_vec is None:
            item_vec = self.catalogue_vectors(items)
        with torch.no_grad():
            pred = vmap(lambda a, fr, t: self._predict_items({**fr, **a}, t, items, item_vec), in_dims=(0, None, 0),
                        randomness="different")(adapted, frozen, task)
        low, high = self.model.rating_scale
        return pred.clamp(low, high)

    def evaluate(self, tasks, steps: int | None = None, batch_size: int = 256) -> dict[str, float]:
        """Query MAE / RMSE over a TaskSet, rating-weighted (every query rating counts once)."""
        abs_err = sq_err = count = 0.0
        device = next(self.model.parameters()).device
        for batch in tasks.batches(batch_size, bucket=True):
            batch = batch.to(device)
            pred = self.predict_query(batch, steps)
            err = (pred - batch.query_rating) * batch.query_mask
            abs_err += float(err.abs().sum())
            sq_err += float((err**2).sum())
            count += float(batch.query_mask.sum())
        if count == 0:
            return {"mae": float("nan"), "rmse": float("nan"), "n": 0}
        return {"mae": abs_err / count, "rmse": float(np.sqrt(sq_err / count)), "n": int(count)}
