"""What the per-task functions of :mod:`metarec.meta.maml` see: one meta-batch as a dict of tensors (a
pytree ``vmap`` maps over), and one task's predictions under a parameter dict.

Hoisting: when no embedding parameter adapts, user and item vectors do not change in the inner loop, so
they are computed here once per meta-batch (differentiably w.r.t. the meta-parameters, each distinct
item once) instead of in every inner step of every task.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from metarec.data.encoding import FeatureTable
from metarec.models.base import Context, Params, RatingModel
from metarec.tasks.taskset import TaskBatch

Task = dict[str, object]  # one task's tensors (batched on dim 0 before vmap)


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 2-d table and any index shape (index_select: faster than advanced indexing)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])


def caller(model: RatingModel, params: Params | None):
    """The model's stages under ``params`` (``None``: the module's own parameters, called directly)."""
    if params is None:
        return model
    return lambda *args, **kw: functional_call(model, params, args, kw)


def task_inputs(model: RatingModel, user_features: FeatureTable, batch: TaskBatch, params: Params | None, *,
                hoist: bool, distinct_items: bool = False, whole_task: bool = False,
                users: FeatureTable | None = None,
                catalogue: tuple[torch.Tensor, torch.Tensor] | None = None,
                item_table: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> Task:
    """The tensors the per-task functions need, batched on dim 0. ``hoist``: user and item vectors
    computed here under ``params`` (``None``: the module's own, differentiably); ``distinct_items``: also the distinct items' vectors and each row's
    index into them (the batched head's per-item work). ``whole_task``: the query joins the support
    (Reptile). ``users``: the tasks' encoded user attributes given directly (a served new user).
    ``catalogue``: the whole catalogue's (item vectors, Gram statistics) under the module's own parameters,
    for a model that folds users in against it; used only when ``params`` is None. ``item_table``: every
    catalogue item's vector under the module's own parameters (rows = item indices) and, for the batched
    head, the first layer's item half of each (``support_proj``; or None): a served model's, computed once,
    so a request looks its support items up instead of embedding them; used only when ``params`` is None."""
    task: Task = {
        "support_item": batch.support_item, "support_rating": batch.support_rating, "support_mask": batch.support_mask,
        "query_item": batch.query_item, "query_rating": batch.query_rating, "query_mask": batch.query_mask,
    }
    if batch.support_prior is not None:  # a known user's history rows that set the prior (Context.prior)
        task["support_prior"] = batch.support_prior
    if whole_task:
        for part in ("item", "rating", "mask"):
            task[f"support_{part}"] = torch.cat([task[f"support_{part}"], task[f"query_{part}"]], dim=1)
        if "support_prior" in task:
            task["support_prior"] = torch.cat([task["support_prior"], torch.zeros_like(task["query_mask"])], dim=1)
    users = user_features.select(batch.user_idx) if users is None else users
    if not hoist:
        task["user_single"], task["user_multi"] = dict(users.single), dict(users.multi)
        return task
    call = caller(model, params)
    user_vec = call("users", dict(users.single), dict(users.multi))
    if user_vec.dim() != 2 or user_vec.shape[0] != len(batch):  # no user attributes: [B, 0]
        user_vec = user_vec.new_zeros(len(batch), user_vec.shape[-1])
    task["user_vec"] = user_vec
    s = task["support_item"].shape[1]  # support and query items in one call, each distinct item once
    if needs_catalogue(model):  # the implicit fold-in sees every item: embed the catalogue once, index it
        items = torch.arange(model.n_items, device=task["support_item"].device)
        inverse = torch.cat([task["support_item"], task["query_item"]], dim=1)
        if catalogue is not None and params is None:  # a served model's, computed once (MetaLearner.freeze_catalogue)
            vec, stats = catalogue
        else:
            vec = call("items", items)
            stats = model.catalogue_stats(vec)
        task["catalogue"] = stats.expand(len(batch), *stats.shape)
    elif item_table is not None and params is None and "support_prior" not in task:  # a served catalogue's rows
        vec, proj = item_table
        inverse = torch.cat([task["support_item"], task["query_item"]], dim=1)
        if proj is not None:
            task["support_proj"] = rows(proj, task["support_item"])
    else:
        items, inverse = torch.unique(torch.cat([task["support_item"], task["query_item"]], dim=1), return_inverse=True)
        vec = call("items", items)
    task["support_vec"], task["query_vec"] = rows(vec, inverse[:, :s]), rows(vec, inverse[:, s:])
    if "support_prior" in task and model.uses_context:  # history rows, in new items' space
        task["support_prior_vec"] = rows(call("items", items, as_new=True), inverse[:, :s])
    if distinct_items:
        task["item_vec"], task["support_inv"], task["query_inv"] = vec, inverse[:, :s], inverse[:, s:]
    return task


def needs_catalogue(model: RatingModel) -> bool:
    """Whether the model folds a user in against the whole catalogue (NeuralCF's implicit fold-in)."""
    return bool(model.implicit and model.uses_context and hasattr(model, "catalogue_stats"))


def restrict(task: Task, index: torch.Tensor) -> Task:
    """Tasks ``index`` of a meta-batch's inputs: every per-task entry's rows (widths kept; padding is
    masked); ``item_vec``, the batch's distinct items that ``*_inv`` index into, is shared and kept whole."""
    out: Task = {}
    for key, value in task.items():
        if key == "item_vec":
            out[key] = value
        elif isinstance(value, dict):
            out[key] = {k: v.index_select(0, index.to(v.device)) for k, v in value.items()}
        else:
            out[key] = value.index_select(0, index.to(value.device))
    return out


def step_masks(support_mask: torch.Tensor, steps: int, size: int | None,
               generator: torch.Generator | None) -> torch.Tensor | None:
    """[B, steps, S]: per inner step, a random support mini-batch of ``size`` real ratings per task."""
    if size is None or steps == 0:
        return None
    b, s = support_mask.shape
    keys = torch.rand(steps, b, s, generator=generator).to(support_mask.device)
    keys = keys.masked_fill(support_mask.unsqueeze(0) == 0, 2.0)
    rank = keys.argsort(-1).argsort(-1)
    return ((rank < size) & (support_mask.unsqueeze(0) > 0)).to(support_mask.dtype).transpose(0, 1)


def user_and_context(model: RatingModel, params: Params | None, task: Task):
    """One task's stage caller, user vector and support context (hoisted in ``task`` or computed under
    ``params``; ``None``: the module's own parameters, called directly - also on a whole batch)."""
    call = caller(model, params)
    if "user_vec" in task:
        user, support = task["user_vec"], task["support_vec"]
    else:
        user = call("users", task["user_single"], task["user_multi"], vmap_safe=True)
        support = call("items", task["support_item"], vmap_safe=True) if model.uses_context else None
    prior_vec = task.get("support_prior_vec")
    if prior_vec is None and "support_prior" in task and model.uses_context:  # not hoisted
        prior_vec = call("items", task["support_item"], vmap_safe=True, as_new=True)
    context = (Context(support, task["support_rating"], task["support_mask"], task.get("support_prior"), prior_vec,
                       task.get("catalogue")) if model.uses_context else None)
    return call, user, context


def predict_task(model: RatingModel, params: Params, task: Task, which: str) -> torch.Tensor:
    """f_phi on one task's ``which`` (support / query) items under ``params``."""
    call, user, context = user_and_context(model, params, task)
    if f"{which}_vec" in task:  # hoisted
        items = task[f"{which}_vec"]
    elif which == "support" and context is not None:  # the support vectors were just computed
        items = context.item_vec
    else:
        items = call("items", task[f"{which}_item"], vmap_safe=True)
    return call("score", user, items, context, exclude_self=(which == "support"))


def predict_task_items(model: RatingModel, params: Params, task: Task, items: torch.Tensor,
                       item_vec: torch.Tensor | None) -> torch.Tensor:
    """Predicted ratings of arbitrary ``items`` (shared by all tasks) for one task's user."""
    call, user, context = user_and_context(model, params, task)
    if item_vec is None:
        item_vec = call("items", items, vmap_safe=True)
    return call("score", user, item_vec, context)


def task_user_weights(model: RatingModel, params: Params | None, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's (w, c) of a model linear in the item vector (see ``NeuralCF.user_weights``)."""
    call, user, context = user_and_context(model, params, task)
    return call("user_weights", user, context)
