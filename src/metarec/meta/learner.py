"""The meta-learner: meta-parameters phi (the model's), Meta-SGD's learned inner rates, the outer
optimiser, and the kernel that computes :mod:`metarec.meta.maml`'s quantities for them.

``meta_step`` is one outer update: the meta-gradient of one meta-batch (by the chosen kernel), clipped,
then Adam. ``adapt`` / ``predict_query`` / ``predict_items`` use the meta-learned model for new users.
Only parameters in the ``adapt`` scope change in the inner loop; when those are all head parameters the
user and item vectors are computed once per meta-batch (``hoist``, see :mod:`metarec.meta.inputs`).
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from metarec.data.encoding import FeatureTable
from metarec.meta import maml, predict
from metarec.meta.config import MetaConfig
from metarec.meta.inputs import (Task, needs_catalogue, predict_task, predict_task_items, restrict, step_masks,
                                 task_inputs, task_user_weights)
from metarec.meta.kernels import batched_head, choose_kernel, fused_adam, one_step
from metarec.models.base import Params, RatingModel
from metarec.tasks.taskset import TaskBatch

log = logging.getLogger(__name__)


def unadapted_view(p: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """``p`` repeated for ``n_tasks`` tasks without a copy: a stride-0 leading axis even for one task
    (``expand`` keeps a size-1 axis's stride), which is how :meth:`MetaLearner.user_weights` tells that
    nothing was adapted and takes the one batched call instead of ``vmap``."""
    return torch.as_strided(p, (n_tasks, *p.shape), (0, *p.stride()), p.storage_offset())


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
        self.frozen_catalogue: tuple[torch.Tensor, torch.Tensor] | None = None  # serving only: freeze_catalogue
        self.adapted = adapted_names(model, config.adapt)
        if not self.adapted:
            raise ValueError(f"no parameters in adapt scope {config.adapt!r}")
        self.hoist = not any(n in model.parameter_groups()["embeddings"] for n in self.adapted)
        self.kernel = choose_kernel(model, config, self.adapted, self.hoist)
        self._params = dict(model.params())  # the Parameter objects the optimiser holds, built once
        self.inner_lrs: dict[str, nn.Parameter] = {}
        if config.algorithm == "metasgd":
            self.inner_lrs = {n: nn.Parameter(torch.full_like(self._params[n], config.inner_lr)) for n in self.adapted}
        self._optimizer: torch.optim.Optimizer | None = None
        self.predict_task = partial(predict_task, model)  # f under params on one task (maml.Predict)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The outer Adam, made on first use: a model loaded only to predict or serve never builds one (the
        constructor imports torch's compiler, 1.6 s once per process)."""
        if self._optimizer is None:
            self._optimizer = fused_adam.make_adam(self.meta_parameters(), self.config.outer_lr)
        return self._optimizer

    @property
    def batched(self) -> bool:
        """Whether the batched-head kernel adapts and predicts (``one_step`` uses it too)."""
        return self.kernel != "vmap"

    # ------------------------------------------------------------------ parameters
    def meta_parameters(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.inner_lrs.values()]

    def named_meta_parameters(self) -> dict[str, torch.Tensor]:
        out = dict(self._params)
        out.update({f"inner_lr.{n}": p for n, p in self.inner_lrs.items()})
        return out

    def load_training_state(self, other: "MetaLearner") -> None:
        """Take ``other``'s parameters, learned inner rates and Adam moments (a checkpoint loaded to resume
        a run): training then continues exactly where ``other``'s stopped."""
        self.model.load_state_dict(other.model.state_dict())
        with torch.no_grad():
            for n, p in self.inner_lrs.items():
                p.copy_(other.inner_lrs[n])
        names = self.named_meta_parameters()
        self.optimizer.state.clear()
        for n, p in other.named_meta_parameters().items():
            if p in other.optimizer.state:
                self.optimizer.state[names[n]] = other.optimizer.state[p]

    def split_params(self, params: Params) -> tuple[Params, Params]:
        """(fast, frozen): the parameters that adapt per task and the rest."""
        return maml.split(params, self.adapted)

    def _alpha(self, detach: bool = False) -> float | Params:
        if not self.inner_lrs:
            return self.config.inner_lr
        return {n: (v.detach() if detach else v) for n, v in self.inner_lrs.items()}

    # ------------------------------------------------------------------ task inputs
    def task_inputs(self, batch: TaskBatch, params: Params | None = None, *, whole_task: bool = False,
                    users: FeatureTable | None = None,
                    item_table: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> Task:
        """One meta-batch's tensors for the per-task functions (:func:`metarec.meta.inputs.task_inputs`);
        ``params`` None: the module's own parameters."""
        return task_inputs(self.model, self.user_features, batch, params, hoist=self.hoist,
                           distinct_items=self.batched, whole_task=whole_task, users=users,
                           catalogue=self.frozen_catalogue, item_table=item_table)

    def freeze_catalogue(self, item_vec: torch.Tensor | None) -> None:
        """Serving: the parameters no longer change, so the whole catalogue's Gram statistics that an implicit
        fold-in solves against (O(N F^2)) are computed once here, not once per request. ``item_vec``: the
        catalogue's vectors under the meta-parameters (:meth:`catalogue_vectors`); None: forget them (the
        parameters are about to change). An optimiser step does not mark a parameter changed in any way
        that could be checked per call (the fused Adam kernel leaves the version counter alone), so this is
        explicit."""
        if item_vec is None or not needs_catalogue(self.model):
            self.frozen_catalogue = None
            return
        with torch.no_grad():
            self.frozen_catalogue = (item_vec, self.model.catalogue_stats(item_vec))

    def step_masks(self, support_mask: torch.Tensor, steps: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """Per inner step, a random support mini-batch of ``support_batch_size`` real ratings per task."""
        return step_masks(support_mask, steps, self.config.support_batch_size, generator)

    def _training_inputs(self, batch: TaskBatch, generator: torch.Generator | None, whole_task: bool = False,
                         rows: torch.Tensor | None = None) -> Task:
        """The batch's inputs and random draws; ``rows``: then only those tasks' (the draws stay the whole
        batch's, so a distributed rank's slice sees what one process sees)."""
        task = self.task_inputs(batch, whole_task=whole_task)
        masks = self.step_masks(task["support_mask"], self.config.inner_steps, generator)
        if masks is not None:
            task["step_masks"] = masks
        return task if rows is None else restrict(task, rows)

    # ------------------------------------------------------------------ meta-training
    def meta_loss(self, batch: TaskBatch, *, generator: torch.Generator | None = None,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """L(phi) = mean_i l_Q_i(phi_i^(K)) + lambda ||phi||^2 for one meta-batch (differentiable w.r.t. phi);
        ``rows``: the mean over those tasks only."""
        c = self.config
        if c.algorithm == "reptile":
            raise ValueError("reptile has no meta-loss; use meta_gradients")
        task = self._training_inputs(batch, generator, rows=rows)
        if self.batched:
            return batched_head.meta_loss(self.model, self._params, self.adapted, task, c.inner_steps, self._alpha(),
                                          c.first_order, c.query_loss, c.l2)
        return maml.meta_loss(self.predict_task, self._params, self.adapted, task, c.inner_steps, self._alpha(),
                              c.first_order, c.query_loss, c.l2, c.inner_loss)

    def meta_gradients(self, batch: TaskBatch, *, generator: torch.Generator | None = None,
                       rows: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], float]:
        """The meta-gradient of every meta-parameter (and the loss it came from). ``rows``: of the mean over
        those tasks of ``batch`` only, with the inputs and random draws made for the whole batch (a
        distributed rank's share, :mod:`metarec.meta.distributed`); no rows: zeros, the draws still made."""
        c = self.config
        if rows is not None and len(rows) == 0:
            with torch.no_grad():  # the draws one process makes for this batch, so the next batch's match
                if c.algorithm == "reptile" or self.kernel != "one_step":
                    self._training_inputs(batch, generator, whole_task=c.algorithm == "reptile")
                else:
                    one_step.meta_gradients(self.model, self._params, self.adapted, self.user_features, batch, c,
                                            generator, rows)
            return {n: torch.zeros_like(p) for n, p in self.named_meta_parameters().items()}, 0.0
        if c.algorithm == "reptile":
            with torch.no_grad():
                task = self._training_inputs(batch, generator, whole_task=True, rows=rows)
            params = {n: p.detach() for n, p in self._params.items()}
            if self.batched:
                return batched_head.reptile_gradients(self.model, params, self.adapted, task, c.inner_steps,
                                                      c.inner_lr, c.l2)
            return maml.reptile_gradients(self.predict_task, params, self.adapted, task, c.inner_steps, c.inner_lr, c.l2,
                                          c.inner_loss)
        if self.kernel == "one_step":
            return one_step.meta_gradients(self.model, self._params, self.adapted, self.user_features, batch, c,
                                           generator, rows)
        loss = self.meta_loss(batch, generator=generator, rows=rows)
        return maml.meta_gradients(loss, self.named_meta_parameters()), float(loss.detach())

    def meta_step(self, batch: TaskBatch, *, generator: torch.Generator | None = None) -> float:
        """One outer update of phi from one meta-batch; returns the meta-batch loss."""
        if not self.model.training:
            self.model.train()
        grads, loss = self.meta_gradients(batch, generator=generator)
        self.apply_gradients(grads)
        return loss

    def apply_gradients(self, grads: dict[str, torch.Tensor]) -> None:
        """The outer step (clipped Adam) from given meta-gradients: :meth:`meta_step`'s second half, which a
        distributed rank takes after the ranks' gradients are summed."""
        named = self.named_meta_parameters()
        params, found = list(named.values()), [grads[n] for n in named]
        if fused_adam.applies(self.optimizer, params, found):
            fused_adam.step(self.optimizer, params, found, self.config.grad_clip)
        else:
            fused_adam.plain_step(self.optimizer, params, found, self.config.grad_clip)

    # ------------------------------------------------------------------ using the meta-learned model
    def adapt(self, batch: TaskBatch, steps: int | None = None, users: FeatureTable | None = None,
              item_table: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> tuple[Params, Task]:
        """Personalised parameters of every task in ``batch`` (adapted entries carry a leading task dim).
        ``item_table``: (:meth:`catalogue_vectors` of every catalogue item, :meth:`catalogue_projection` of
        them) under the current parameters, when the caller keeps them (a served model): the batch's items
        are looked up in them instead of embedded."""
        steps = self.config.test_steps if steps is None else steps
        # the batched head reads only the adapted entries (a served request: no detach of the embedding tables)
        params = {n: self._params[n].detach() for n in (self.adapted if self.batched else self._params)}
        with torch.no_grad():  # the module's own parameters (no functional_call), nothing recorded
            task = self.task_inputs(batch, users=users, item_table=item_table)
        if self.batched:
            state, adapted = batched_head.adapt(self.model, params, self.adapted, task, steps, self._alpha(detach=True))
            # predict_query / predict_items reuse the adapted head in its compact (low-rank) form
            task["head_state"], task["head_params"] = state, adapted
            return adapted, task
        fast, _ = self.split_params(params)
        if steps == 0:  # nothing to adapt (a closed-form fold-in, if any, happens when scoring): views, no vmap
            return {n: unadapted_view(p, len(batch)) for n, p in fast.items()}, task
        return maml.adapt(self.predict_task, params, self.adapted, task, steps, self._alpha(detach=True),
                          self.config.inner_loss), task

    def predict_query(self, batch: TaskBatch, steps: int | None = None) -> torch.Tensor:
        """Query predictions [B, Q] after ``steps`` inner steps on each task's support set (0: none)."""
        if self.model.training:
            self.model.eval()
        adapted, task = self.adapt(batch, steps)
        if self.batched:
            pred = batched_head.predict(self.model, task["head_state"], task["query_vec"])
        else:
            frozen = self._frozen(adapted)
            with torch.no_grad():
                pred = vmap(lambda a, fr, t: self.predict_task({**fr, **a}, t, "query"), in_dims=(0, None, 0),
                            randomness="different")(adapted, frozen, task)
        return self._clamp(pred)

    def catalogue_vectors(self, items: torch.Tensor) -> torch.Tensor | None:
        """Item vectors under the meta-parameters (reusable across users when embeddings do not adapt)."""
        if not self.hoist:
            return None
        with torch.no_grad():
            return functional_call(self.model, dict(self.model.named_parameters()), ("items", items))

    def catalogue_projection(self, item_vec: torch.Tensor | None) -> torch.Tensor | None:
        """What the batched head can precompute from catalogue vectors under the meta-parameters (the
        first layer's item half applied to every item), for :meth:`predict_items`; None without it."""
        if not self.batched or item_vec is None:
            return None
        with torch.no_grad():
            return batched_head.project_items(self.model, self._params, item_vec)

    def catalogue_gram(self, item_vec: torch.Tensor | None, max_items: int = 6000) -> torch.Tensor | None:
        """item_vec @ item_vec^T for the whole catalogue ([N, N], N <= ``max_items``): with it the batched
        head scores items against a user's support set by a lookup instead of a product (see
        :meth:`predict_items`); None without a batched head or for a larger catalogue."""
        if not self.batched or item_vec is None or item_vec.shape[0] > max_items:
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
        if self.batched:
            compact = task.get("head_params") is adapted  # straight from adapt(): its compact form
            pred = batched_head.predict_catalogue(self.model, task["head_state"] if compact else None, adapted, task,
                                                  items, item_vec, item_proj, catalogue_gram)
            return self._clamp(pred)
        with torch.no_grad():
            if self.model.linear_in_item and item_vec is not None and item_vec.dim() == 2:
                w, c = self.user_weights(adapted, task)  # each user's (w, c), then one product
                pred = self.model.score_with_weights(w, c, item_vec)
            else:
                pred = vmap(lambda a, fr, t: predict_task_items(self.model, {**fr, **a}, t, items, item_vec),
                            in_dims=(0, None, 0), randomness="different")(adapted, self._frozen(adapted), task)
        return self._clamp(pred)

    def user_weights(self, adapted: Params, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Every adapted task's (w [B, F], c [B]) of a model linear in the item vector (NeuralCF):
        score(v) = q_v . w + b_v + c. Nothing adapted (adapt(steps=0)'s views) and vectors hoisted: one
        batched call, no vmap."""
        with torch.no_grad():
            if self._unadapted(adapted) and "user_vec" in task:
                return task_user_weights(self.model, None, task)
            return vmap(lambda a, fr, t: task_user_weights(self.model, {**fr, **a}, t), in_dims=(0, None, 0),
                        randomness="different")(adapted, self._frozen(adapted), task)

    def _unadapted(self, adapted: Params) -> bool:
        """Whether ``adapted`` is adapt(steps=0)'s views: every entry the model's own parameter repeated
        along a stride-0 task axis (any other tensor, even one equal across tasks, counts as adapted)."""
        own = self._params
        return all(v.dim() > 0 and v.stride(0) == 0 and n in own and v.data_ptr() == own[n].data_ptr()
                   for n, v in adapted.items())

    def _frozen(self, adapted: Params) -> Params:
        return {n: p.detach() for n, p in self.model.named_parameters() if n not in adapted}

    def _clamp(self, pred: torch.Tensor) -> torch.Tensor:
        if self.model.implicit:  # ranking scores: only their order matters, a clamp would make ties
            return pred
        low, high = self.model.rating_scale
        return pred.clamp(low, high)

    # ------------------------------------------------------------------ whole task sets
    def predict_tasks(self, tasks, steps: int | None = None, batch_size: int = 256,
                      max_batch_ratings: int = 262_144) -> np.ndarray:
        """Every query rating's prediction, flat in the order of ``tasks.query_item`` (:func:`predict.predict_tasks`)."""
        return predict.predict_tasks(self, tasks, steps, batch_size, max_batch_ratings)

    def task_batches(self, tasks, batch_size: int = 256, max_batch_ratings: int = 262_144):
        """``(task indices, TaskBatch)`` covering ``tasks`` once (:func:`predict.task_batches`)."""
        return predict.task_batches(self, tasks, batch_size, max_batch_ratings)

    def evaluate(self, tasks, steps: int | None = None, batch_size: int = 256) -> dict[str, float]:
        """Query MAE / RMSE over a TaskSet, rating-weighted (:func:`predict.evaluate`)."""
        return predict.evaluate(self, tasks, steps, batch_size)
