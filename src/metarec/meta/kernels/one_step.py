"""The one-step kernel: MAML's meta-gradient for one inner step with a scalar rate, written out by hand.

For ``maml`` / ``fomaml`` with ``inner_steps = 1`` on a FeatureMLP whose head alone adapts, the forward
runs without an autograd graph and the meta-gradient of the head (through the inner step, second or first
order) is a hand-written reverse pass (equations in :func:`one_step_meta_gradient`); one autograd backward
then carries it into the embeddings. The same maths as :func:`metarec.meta.maml.meta_loss` followed by
:func:`metarec.meta.maml.meta_gradients`; ``tests/meta/kernels/test_one_step.py`` holds them equal.
Adaptation and prediction are the batched head's (:mod:`metarec.meta.kernels.batched_head`).
"""

from __future__ import annotations

import logging

import torch

from metarec.data.encoding import FeatureTable
from metarec.meta.config import MetaConfig
from metarec.meta.inputs import step_masks
from metarec.meta.kernels import batched_head
from metarec.meta.kernels.lowrank import add_back, add_linear, affine, back_linear, flat, linear, relu_back_, take
from metarec.models.base import Params, RatingModel
from metarec.models.embedding import PackedAttributes, packed_table, packed_tables
from metarec.models.feature_mlp import FeatureMLP
from metarec.tasks.taskset import TaskBatch

log = logging.getLogger(__name__)


def applies(model: RatingModel, config: MetaConfig, adapted: list[str], hoist: bool) -> str | None:
    """None when this kernel computes the learner's meta-gradient exactly; otherwise the reason it does not."""
    reason = batched_head.applies(model, adapted, hoist)
    if reason is not None:
        return reason
    if config.inner_steps != 1 or config.algorithm not in ("maml", "fomaml"):
        return "it is written for one inner step of maml / fomaml"
    if config.query_loss != "squared" or config.inner_loss != "squared":
        return "it is written for the squared query and support losses"
    if len(model.linear_names()) < 2:
        return "the head has fewer than two linear layers"
    return None


def meta_gradients(model: FeatureMLP, params: Params, adapted: list[str], user_features: FeatureTable,
                   batch: TaskBatch, config: MetaConfig,
                   generator: torch.Generator | None,
                   rows: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """grad L(phi) of every model parameter and L(phi): the head's forward and reverse pass by hand (no
    graph), then the embeddings' gradients: by hand too where every other parameter is an attribute table
    (:func:`hand_embeddings`), else one autograd backward through the user and distinct item vectors.
    ``rows``: of the mean over those tasks, the random draws still made for the whole batch."""
    idx = batch.user_idx
    tables = hand_embeddings(model, params, adapted)
    # each distinct item of the batch embedded once
    items, inverse = torch.unique(torch.cat([batch.support_item.reshape(-1), batch.query_item.reshape(-1)]),
                                  return_inverse=True)
    n_support = batch.support_item.numel()
    support_inv = inverse[:n_support].view(batch.support_item.shape)
    query_inv = inverse[n_support:].view(batch.query_item.shape)
    if tables is not None:  # no graph: the tables' gradients are written below
        with torch.no_grad():
            user_table, item_table = packed_table(model.user_embedding), packed_table(model.item_embedding)
            user_at = model.packed_users(user_features).lookup(idx, user_table.dtype)
            item_at = model._packed_items().lookup(items, item_table.dtype)
            user_vec = PackedAttributes.embed_rows(user_table, user_at)
            item_vec = PackedAttributes.embed_rows(item_table, item_at)
    else:
        user_vec = model.embed_users({k: v.index_select(0, idx) for k, v in user_features.single.items()},
                                     {k: v.index_select(0, idx) for k, v in user_features.multi.items()})
        if user_vec.dim() != 2 or user_vec.shape[0] != len(batch):  # no user attributes: [B, 0]
            user_vec = user_vec.new_zeros(len(batch), user_vec.shape[-1])
        item_vec = model.embed_items(items)
    mask = batch.support_mask
    masks = step_masks(mask, 1, config.support_batch_size, generator)
    if masks is not None:
        mask = masks[:, 0]
    s_rating, q_rating, q_mask = batch.support_rating, batch.query_rating, batch.query_mask
    task_user_vec = user_vec
    if rows is not None:  # a distributed rank's share (metarec.meta.distributed)
        if len(rows) == 0:
            return {n: torch.zeros_like(p) for n, p in params.items()}, 0.0
        rows = rows.to(user_vec.device)
        task_user_vec, support_inv, query_inv, mask, s_rating, q_rating, q_mask = (
            t.index_select(0, rows) for t in (user_vec, support_inv, query_inv, mask, s_rating, q_rating, q_mask))
    support_weight = mask * (2.0 * config.inner_lr / mask.sum(-1, keepdim=True).clamp(min=1.0))
    query_weight = q_mask / (q_mask.sum(-1, keepdim=True).clamp(min=1.0) * q_mask.shape[0])
    head = {n: params[n].detach() for n in adapted}
    args = (model, head, task_user_vec.detach(), item_vec.detach(), support_inv, query_inv, s_rating,
            support_weight, q_rating, query_weight, config.first_order)
    with torch.no_grad():
        loss, head_grads, d_user, d_item = (compiled_meta_gradient(*args) if config.compile_kernel
                                            else one_step_meta_gradient(*args))
        grads = dict(head_grads)
        if tables is not None:
            if rows is not None:  # the other tasks' users get no adjoint
                d_user = d_user.new_zeros(user_vec.shape).index_add_(0, rows, d_user)
            grads.update(_table_gradients(tables, ((user_table, user_at, d_user), (item_table, item_at, d_item))))
    if tables is None:
        rest = [n for n in params if n not in head_grads]
        outputs = [(v, g) for v, g in ((task_user_vec, d_user), (item_vec, d_item)) if v.requires_grad]
        found = torch.autograd.grad([v for v, _ in outputs], [params[n] for n in rest], [g for _, g in outputs],
                                    allow_unused=True) if outputs and rest else [None] * len(rest)
        grads.update({n: (torch.zeros_like(params[n]) if g is None else g) for n, g in zip(rest, found)})
    grads = {n: grads[n] for n in params}  # model order
    loss = float(loss)
    if config.l2:
        with torch.no_grad():
            loss += float(config.l2 * sum((p ** 2).sum() for p in params.values()))
            grads = {n: g + 2 * config.l2 * params[n] for n, g in grads.items()}
    return grads, loss


def hand_embeddings(model: FeatureMLP, params: Params, adapted: list[str]) -> list[list[tuple[str, int]]] | None:
    """(parameter name, rows) of the user and of the item attribute tables (in :func:`packed_table`'s
    order) where the embeddings' backward can be written out: every parameter outside the head is one of
    those tables, given as the module's own (so the packed lookup reads the same values). None otherwise
    (an id embedding, an item tower, functional parameters): the autograd backward then."""
    if model.user_embedding is None or model.item_embedding is None:
        return None
    names = {id(p): n for n, p in params.items()}
    out = [[(names.get(id(t.weight)), t.weight.shape[0]) for t in packed_tables(e)]
           for e in (model.user_embedding, model.item_embedding)]
    found = {n for side in out for n, _ in side}
    if None in found or found | set(adapted) != set(params) or found & set(adapted):
        return None
    return out


def _table_gradients(tables: list[list[tuple[str, int]]], sides) -> dict[str, torch.Tensor]:
    """Each attribute table's gradient from the user / item vectors' adjoints (PackedAttributes'
    backward, no graph): one buffer per side, each table's gradient a contiguous block of its rows."""
    grads = {}
    for side, (table, at, adjoint) in zip(tables, sides):
        buffer = PackedAttributes.table_gradient(adjoint, at, torch.zeros_like(table))
        grads.update(zip([n for n, _ in side], buffer.split([rows for _, rows in side])))
    return grads


_COMPILED: dict[str, object] = {}  # "kernel": torch.compile's wrapper, once per process; "failed": why not


def compiled_meta_gradient(*args: object) -> tuple[torch.Tensor, Params, torch.Tensor, torch.Tensor]:
    """:func:`one_step_meta_gradient` through ``torch.compile`` (``MetaConfig.compile_kernel``): its ~100
    small products and element-wise ops on [B, S, h] tensors run as fewer, fused kernels. Shapes are
    dynamic (support widths and distinct items vary per batch), so a run compiles a handful of graphs
    once. If compiling fails (no C++ compiler, an unsupported torch), the eager function runs from then
    on, with one warning."""
    if "failed" not in _COMPILED:
        from torch._dynamo.exc import BackendCompilerFailed  # torch's compiler, imported only when asked for

        kernel = _COMPILED.get("kernel")
        if kernel is None:
            kernel = _COMPILED["kernel"] = torch.compile(one_step_meta_gradient, dynamic=True)
        try:
            return kernel(*args)  # type: ignore[operator]
        except BackendCompilerFailed as exc:  # the compiler, not the maths (those errors propagate)
            _COMPILED["failed"] = f"{type(exc).__name__}: {exc}"
            log.warning("meta.compile_kernel: torch.compile of the one-step kernel failed, running it eagerly (%s)",
                        _COMPILED["failed"].splitlines()[0][:300])
    return one_step_meta_gradient(*args)


# the meta-gradient of one inner step, written out (no autograd) ------------
def one_step_meta_gradient(model: FeatureMLP, head: Params, user_vec: torch.Tensor, item_vec: torch.Tensor,
                           support_inv: torch.Tensor, query_inv: torch.Tensor, support_rating: torch.Tensor,
                           support_weight: torch.Tensor, query_rating: torch.Tensor, query_weight: torch.Tensor,
                           first_order: bool) -> tuple[torch.Tensor, Params, torch.Tensor, torch.Tensor]:
    """Query loss of every task after one inner step from the shared head, and its gradient w.r.t.
    the head, the user vectors and the (distinct) item vectors, by a hand-written reverse pass.

    The same maths as ``batched_head.adapt_head`` with one step (scalar lr) + ``predict_head`` + the weighted
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
    names = model.linear_names()
    n_layers = len(names)
    (w1n, b1n) = names[0]
    du = model.user_dim
    w_user, w_item = head[w1n][:, :du], head[w1n][:, du:]
    ws = [head[wn] for wn, _ in names]
    bs = [head[bn] for _, bn in names]
    u, x = user_vec, item_vec
    n_tasks, s_len = support_inv.shape
    center = model.rating_center

    # ---- forward: support pass, inner backward, query pass through the stepped head
    proj = x @ w_item.t()  # [U, h1]
    c = torch.addmm(bs[0], u, w_user.t())  # [B, h1]
    xs, xq = take(x, support_inv), take(x, query_inv)
    hs = [take(proj, support_inv).add_(c.unsqueeze(1)).relu_()]  # hs[i]: layer i + 1's output (post-ReLU)
    for i in range(1, n_layers):
        a = affine(hs[i - 1], ws[i], bs[i])
        if i < n_layers - 1:
            hs.append(a.relu_())
    pred = a.squeeze(-1) + center
    err = (pred - support_rating) * support_weight  # e, [B, S]
    d = [None] * n_layers  # D_l
    d[-1] = err.unsqueeze(-1)
    for i in range(n_layers - 2, -1, -1):
        d[i] = relu_back_(back_linear(d[i + 1], ws[i + 1]), hs[i])
    d1 = d[0].sum(1)
    uu = (u * u).sum(-1, keepdim=True) + 1.0  # s
    gram = torch.bmm(xq, xs.transpose(1, 2))  # G [B, Q, S]
    zq = torch.baddbmm(take(proj, query_inv), gram, d[0], alpha=-1.0).add_((c - uu * d1).unsqueeze(1))
    hq, kq = [zq.relu_()], [gram]  # kq[i]: K_{i+1}
    for i in range(1, n_layers):
        k = torch.bmm(hq[i - 1], hs[i - 1].transpose(1, 2))
        kq.append(k)
        bias = bs[i] - d[i].sum(1)  # b_l' [B, out]
        a = torch.baddbmm(linear(hq[i - 1], ws[i]), k, d[i], alpha=-1.0).add_(bias.unsqueeze(1))
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
        grads[wn] = flat(zbar).t() @ flat(hq[i - 1])
        bq = zbar.sum(1)  # [B, out]
        grads[bn] = bq.sum(0)
        r = torch.bmm(zbar, d[i].transpose(1, 2))  # R_l [B, Q, S]
        h_bar = torch.baddbmm(back_linear(zbar, ws[i]), r, hs[i - 1], alpha=-1.0)
        if second:
            d_bar[i] = torch.bmm(kq[i].transpose(1, 2), zbar).neg_().sub_(bq.unsqueeze(1))
            hs_bar[i - 1] = torch.bmm(r.transpose(1, 2), hq[i - 1]).neg_()
        zbar = relu_back_(h_bar, hq[i - 1])
    r1 = torch.bmm(zbar, d[0].transpose(1, 2))  # R_1
    c_bar = zbar.sum(1)  # the adjoint of c' (and of c)
    rows_bar = [zbar, torch.bmm(r1, xs).neg_()]  # query rows: P_Q', X_Q'
    u_bar = u * ((d1 * c_bar).sum(-1, keepdim=True) * (-2.0 if second else -1.0))
    if second:
        d_bar[0] = torch.bmm(gram.transpose(1, 2), zbar).neg_().sub_(uu.unsqueeze(1) * c_bar.unsqueeze(1))
        xs_bar = torch.bmm(r1.transpose(1, 2), xq).neg_()
        # inner backward, reversed
        for i in range(n_layers - 1):
            t = relu_back_(d_bar[i], hs[i])
            d_bar[i + 1] = add_linear(d_bar[i + 1], t, ws[i + 1])
            wn = names[i + 1][0]
            grads[wn] = grads[wn].addmm_(flat(d[i + 1]).t(), flat(t))
        # support pass
        zbar = d_bar[-1] * support_weight.unsqueeze(-1)  # p' = g e'
        for i in range(n_layers - 1, 0, -1):
            wn, bn = names[i]
            grads[wn] = grads[wn].addmm_(flat(zbar).t(), flat(hs[i - 1]))
            grads[bn] = grads[bn] + zbar.sum((0, 1))
            h_bar = add_back(hs_bar[i - 1], zbar, ws[i])
            zbar = relu_back_(h_bar, hs[i - 1])
        c_bar = c_bar + zbar.sum(1)
        p_bar = proj.new_zeros(proj.shape).index_add_(0, support_inv.reshape(-1), flat(zbar))
        x_bar = x.new_zeros(x.shape).index_add_(0, support_inv.reshape(-1), flat(xs_bar))
    else:
        p_bar, x_bar = proj.new_zeros(proj.shape), x.new_zeros(x.shape)
    # first layer: c = W_u u + b_1, P = X W_i^T; per-row adjoints summed into the distinct items
    p_bar = p_bar.index_add_(0, query_inv.reshape(-1), flat(rows_bar[0]))
    x_bar = x_bar.index_add_(0, query_inv.reshape(-1), flat(rows_bar[1]))
    grads[b1n] = c_bar.sum(0)
    grads[w1n] = torch.cat([c_bar.t() @ u, p_bar.t() @ x], 1)
    u_bar = u_bar.addmm_(c_bar, w_user)
    x_bar = x_bar.addmm_(p_bar, w_item)
    return loss, grads, u_bar, x_bar

