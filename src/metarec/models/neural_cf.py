"""NeuralCF: p_u from the user's attributes, q_v from the item's, rating = p_u . q_v + biases (seed §3.3).

The item side (q_v and its bias) is computed in the ``items`` stage, so when only the head adapts it is
computed once per meta-batch; the head is the user tower and the user bias, i.e. exactly what a new
user's ratings should personalise.

With ``fold_in=True`` the user's factors are also *solved* from the support set: the inner problem of
matrix-factorisation fold-in (ridge regression of the support residuals on [q_v, 1]) has a closed form,
so it is solved exactly inside the model and the outer loop trains the item towers, the attribute prior
p_u and the ridge penalties through the solution (a differentiable closed-form inner loop, as in
Bertinetto et al., ICLR 2019). Gradient steps of MAML, if any, adapt the user tower on top of it.

A known user's history (their training ratings, ``Context.prior``) can instead set the prior: the offset
is first solved from the history alone, and the support is then folded in around that solution - what
matrix factorisation does when it folds a trained user in around their trained factors. The history then
informs a task without outvoting its own support ratings (a returning user rating new items).

Implicit feedback (``implicit``, Hu, Koren & Volinsky 2008): a support row is a positive whose rating is its
confidence; every other catalogue item is an unobserved zero. The fold-in then fits 1 to each positive with
weight 1 + a c (a learned) and 0 to every other item with weight 1 - the iALS fold-in, solved exactly against
the whole catalogue through its Gram matrix (``catalogue_stats``: O(F^2) per user, whatever the catalogue's
size) - and its scores, scaled by a learned g, are added to the prior's. A history (``Context.prior``) is
folded in as support.
"""

from __future__ import annotations

import torch
from torch import nn

from metarec.errors import ConfigError
from metarec.models.base import Context, RatingModel
from metarec.models.embedding import mlp

# The smallest ridge penalty a fold-in solve uses (a prior precision in rating units: 1e-3 is a prior standard
# deviation of ~30 ratings, i.e. no shrinkage at all). A learned penalty far below it made a short support's
# Gram matrix singular in float32: the solve returned garbage (a one-rating fit of 0.5 came back as -3.7).
RIDGE_FLOOR = 1e-3


class NeuralCF(RatingModel):
    """rating = center + b + b_u + b_v + p_u . q_v with p_u = f(user attrs), q_v = g(item attrs [, item id])."""

    linear_in_item = True

    def __init__(self, *args, factors: int = 32, hidden: tuple[int, ...] = (64,), dropout: float = 0.0,
                 fold_in: bool = False, item_id_residual: bool = False, history_penalty_scale: float = 1.5,
                 penalty_rate: float = 1.0, penalty_by_support_size: bool = False, support_map: bool = False,
                 **kwargs) -> None:
        # item_id_residual: a warm item's id vector is added to the tower's [q_v, b_v] instead of entering
        # the tower, so the tower's output is what the attributes alone predict - all a new item has - and
        # the id vector is the item's own deviation from it, as in matrix factorisation with side features.
        super().__init__(*args, item_id_size=factors + 1 if item_id_residual else None, **kwargs)
        self.factors = factors
        self.fold_in = fold_in
        self.history_penalty_scale = float(history_penalty_scale)  # see ModelConfig
        self.uses_context = fold_in
        # the ridge penalty is exp(penalty_rate * w): Adam moves w by about its learning rate per step, so a
        # rate > 1 lets the penalty travel orders of magnitude within a few epochs (a dataset where a
        # newcomer's ratings say almost nothing needs a large one). With penalty_by_support_size it is
        # exp(penalty_rate * (w_j + c * log(1 + n))) for a support of n ratings, c learned (from 0).
        self.penalty_rate = float(penalty_rate)
        self.penalty_by_support_size = bool(penalty_by_support_size)
        if self.item_dim == 0:
            raise ConfigError("neural-cf with item_id_residual needs item attributes: the item tower has no input")
        self.item_tower = mlp([self.item_dim, *hidden, factors + 1], dropout)  # q_v and b_v
        if self.item_id is not None and item_id_residual:
            nn.init.zeros_(self.item_id.weight)  # start at the attributes' prediction
        user_in = max(self.user_dim, 1)
        head: dict[str, nn.Module] = {
            "user_tower": mlp([user_in, *hidden, factors + 1], dropout),  # p_u and b_u
            "bias": nn.Linear(1, 1, bias=False),
        }
        if fold_in:
            # log of the ridge penalty per coordinate of [delta p_u, delta b_u]; exp(1.0) ~ 2.7 to start
            head["log_reg"] = nn.Linear(factors + 1, 1, bias=False)
            if penalty_by_support_size:
                head["log_reg_slope"] = nn.Linear(1, 1, bias=False)
            if self.implicit:  # log of a, the extra weight of a positive per unit of confidence, and log g
                head["log_confidence"] = nn.Linear(1, 1, bias=False)
                head["log_fold_scale"] = nn.Linear(1, 1, bias=False)
                if support_map:  # FISM-style: M sum_s z_s / sqrt(n) joins the fold-in (M from 0: none at first)
                    head["support_map"] = nn.Linear(factors + 1, factors + 1, bias=False)
        self.head = nn.ModuleDict(head)
        # [n_items, factors + 1] added to the item tower's output: the item-side fold-in of items released
        # after training (metarec.meta.item_fold_in); None = none. Evaluation state, never checkpointed.
        self.item_offset: torch.Tensor | None = None
        nn.init.zeros_(self.head["bias"].weight)
        if fold_in:
            nn.init.constant_(self.head["log_reg"].weight, 1.0 / self.penalty_rate)
            if penalty_by_support_size:
                nn.init.zeros_(self.head["log_reg_slope"].weight)
            if self.implicit:
                nn.init.constant_(self.head["log_confidence"].weight, 2.3)  # a ~ 10, iALS's usual order
                nn.init.constant_(self.head["log_fold_scale"].weight, 2.3)  # g ~ 10: the fold-in's scores in ~[0, 10]
                if support_map:
                    nn.init.zeros_(self.head["support_map"].weight)

    @property
    def item_id_residual(self) -> bool:
        """Whether item id vectors are added to the tower's output (see ``__init__``)."""
        return self.item_id_in_output

    def forward(self, stage: str, *args, **kwargs):  # noqa: D401 - adds the user_weights stage
        if stage == "user_weights":
            return self.user_weights(*args, **kwargs)
        return super().forward(stage, *args, **kwargs)

    def user_weights(self, user_vec: torch.Tensor, context: Context | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, c) such that score(v) = q_v . w + b_v + c for every item: the prior's p_u and biases plus
        the folded-in offset. Scoring a whole catalogue is then one matrix product (serving)."""
        p, b_u = self._user_prior(user_vec)
        c = self.rating_center + self.head["bias"].weight[0, 0] + b_u
        if self.fold_in and context is not None and context.item_vec.shape[-2] > 0:
            delta = self._solve(p, b_u, context)[0]
            p, c = p + delta[..., : self.factors], c + delta[..., self.factors]
        return p, c

    def score_with_weights(self, w: torch.Tensor, c: torch.Tensor, item_vec: torch.Tensor) -> torch.Tensor:
        """Scores [B, N] of items [N, F+1] for users' (w [B, F], c [B]) from :meth:`user_weights`."""
        return torch.addmm(item_vec[:, self.factors].unsqueeze(0) + c.unsqueeze(-1), w, item_vec[:, : self.factors].t())

    def embed_items(self, item_idx: torch.Tensor, *, vmap_safe: bool = False, as_new: bool = False) -> torch.Tensor:
        vec = self.item_tower(super().embed_items(item_idx, vmap_safe=vmap_safe, as_new=as_new))
        if as_new:  # what the attributes alone give: no id vector, no folded-in offset
            return vec
        if self.item_id is not None and self.item_id_in_output:
            vec = vec + self.item_id_vectors(item_idx)
        return vec if self.item_offset is None else vec + self.item_offset[item_idx]

    def score(self, user_vec: torch.Tensor, item_vec: torch.Tensor, context: Context | None = None,
              exclude_self: bool = False) -> torch.Tensor:
        p, b_u = self._user_prior(user_vec)
        prior = self._prior(p, b_u, item_vec)
        if not self.fold_in or context is None or context.item_vec.shape[-2] == 0:
            return prior
        delta, inverse, support_z, support_fit = self._solve(p, b_u, context)
        z = self._design(item_vec)
        pred = prior + (z * delta.unsqueeze(-2)).sum(-1)
        if exclude_self and not self.implicit:
            # Scoring the support items themselves: leave-one-out predictions of the ridge fit, in closed
            # form (r_i - yhat_{-i} = (r_i - yhat_i) / (1 - h_ii)), so an item cannot predict its own rating.
            leverage = ((support_z @ inverse) * support_z).sum(-1) * context.mask
            loo = context.rating - (context.rating - support_fit) / (1.0 - leverage).clamp(min=1e-3)
            pred = torch.where(context.mask > 0, loo, pred) if pred.shape == loo.shape else pred
        return pred

    # ------------------------------------------------------------------ fold-in
    def _user_prior(self, user_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p_u and b_u from the user tower (a dataset without user attributes: from a constant)."""
        if user_vec.shape[-1] == 0:
            user_vec = torch.ones(*user_vec.shape[:-1], 1, dtype=self.rating_center.dtype, device=self.rating_center.device)
        pu = self.head["user_tower"](user_vec)
        return pu[..., : self.factors], pu[..., self.factors]

    def _prior(self, p: torch.Tensor, b_u: torch.Tensor, item_vec: torch.Tensor) -> torch.Tensor:
        q, b_v = item_vec[..., : self.factors], item_vec[..., self.factors]
        dot = (q * p.unsqueeze(-2)).sum(-1)
        return self.rating_center + self.head["bias"].weight[0, 0] + b_u.unsqueeze(-1) + b_v + dot

    def _design(self, item_vec: torch.Tensor) -> torch.Tensor:
        """[q_v, 1]: the regressors of the user's offset (factors and bias)."""
        return torch.cat([item_vec[..., : self.factors], torch.ones_like(item_vec[..., :1])], dim=-1)

    def _solve(self, p: torch.Tensor, b_u: torch.Tensor, context: Context):
        """delta = argmin sum_s m_s (r_s - prior_s - z_s . delta)^2 + sum_j lambda_j delta_j^2.

        With history rows (``context.prior``): delta_h solves that problem on the history alone - in the
        space new items are scored in, the history items' vectors as if they were new
        (``context.prior_item_vec``), so that what it learns about the user carries over to them - then
        delta = argmin over the other rows of the same loss + scale * sum_j lambda_j (delta_j - delta_h_j)^2
        (scale = ``history_penalty_scale`` where the task has history rows, else 1: the plain fold-in).
        Returns (delta, the inverse Gram matrix of the last solve, [q_v, 1] of the support, its fit)."""
        z = self._design(context.item_vec)  # [..., S, F+1]
        prior_fit = self._prior(p, b_u, context.item_vec)
        residual = context.rating - prior_fit
        if self.implicit:
            delta = self._solve_implicit(z, context)
            return delta, None, z, prior_fit + (z * delta.unsqueeze(-2)).sum(-1)
        if context.prior is None:
            delta, inverse = self._ridge(z, residual, context.mask, self.penalty(context.mask))
        else:
            history = context.mask * context.prior
            cold = context.item_vec if context.prior_item_vec is None else context.prior_item_vec
            centre = self._ridge(self._design(cold), context.rating - self._prior(p, b_u, cold), history,
                                 self.penalty(history))[0]
            # the scale applies around a history's solution; with no history row it is the plain fold-in
            scale = torch.where(history.sum(-1, keepdim=True) > 0, self.history_penalty_scale, 1.0)
            step, inverse = self._ridge(z, residual - (z * centre.unsqueeze(-2)).sum(-1), context.mask - history,
                                        self.penalty(context.mask - history) * scale)
            delta = centre + step
        fit = prior_fit + (z * delta.unsqueeze(-2)).sum(-1)
        return delta, inverse, z, fit

    # ------------------------------------------------------------------ implicit fold-in
    def catalogue_stats(self, item_vec: torch.Tensor) -> torch.Tensor:
        """G = sum_v z_v z_v^T ([F+1, F+1]) of the catalogue's item vectors [N, F+1], z_v = [q_v, 1]: all the
        implicit fold-in needs of the unobserved items."""
        z = self._design(item_vec)
        return z.t() @ z

    def catalogue(self, context: Context) -> torch.Tensor:
        """The context's catalogue statistics, or the whole catalogue's under the current parameters."""
        if context.catalogue is not None:
            return context.catalogue
        items = torch.arange(self.n_items, device=self.rating_center.device)
        return self.catalogue_stats(self.embed_items(items))

    def _solve_implicit(self, z: torch.Tensor, context: Context) -> torch.Tensor:
        """delta = g * argmin_d sum_v w_v (y_v - z_v . d)^2 + sum_j lambda_j d_j^2 over every catalogue item v: y = 1,
        w = 1 + a c for a positive of confidence c (a support row rated > 0), y = 0, w = 1 otherwise; g a learned
        scale. The targets are the fold-in's own, not residuals of the prior: the prior's scores live on the
        ranking loss's scale (popularity, attributes), where "every unobserved item is 0" would make the fold-in
        undo them. Through the catalogue's Gram matrix: O(S F^2 + F^3) per user."""
        gram = self.catalogue(context)
        positive = context.mask * (context.rating > 0).to(context.mask.dtype)
        extra = torch.exp(self.head["log_confidence"].weight[0, 0]) * context.rating * positive  # w_v - 1
        zw = z * extra.unsqueeze(-1)
        lhs = gram + zw.transpose(-1, -2) @ z + torch.diag_embed(self.penalty(positive).clamp(min=RIDGE_FLOOR)
                                                                 .expand(*z.shape[:-2], -1))
        rhs = (z * ((1.0 + extra) * positive).unsqueeze(-1)).sum(-2)
        scale = torch.exp(self.head["log_fold_scale"].weight[0, 0])
        delta = scale * torch.linalg.solve(lhs, rhs.unsqueeze(-1)).squeeze(-1)
        if "support_map" in self.head:  # an asymmetric item-item term the ridge cannot express (FISM, Kabbur 2013)
            pooled = (z * positive.unsqueeze(-1)).sum(-2) / positive.sum(-1, keepdim=True).clamp(min=1.0).sqrt()
            delta = delta + self.head["support_map"](pooled)
        return delta

    def penalty(self, mask: torch.Tensor) -> torch.Tensor:
        """The ridge penalty per coordinate of [delta p_u, delta b_u] ([F+1], or [..., F+1] when it depends
        on the support size: ``mask`` [..., S] marks the support's real ratings)."""
        w = self.head["log_reg"].weight[0]
        if self.penalty_by_support_size:
            n = mask.sum(-1, keepdim=True)
            w = w + self.head["log_reg_slope"].weight[0, 0] * torch.log1p(n)
        return torch.exp(self.penalty_rate * w)

    @staticmethod
    def _ridge(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, reg: torch.Tensor):
        """argmin_d sum_s w_s (t_s - z_s . d)^2 + sum_j reg_j d_j^2 (reg floored at ``RIDGE_FLOOR``), and the
        inverse of its Gram matrix."""
        zw = z * weight.unsqueeze(-1)
        reg = reg.clamp(min=RIDGE_FLOOR)
        gram = zw.transpose(-1, -2) @ z + torch.diag_embed(reg.expand(*z.shape[:-2], -1))
        inverse = torch.linalg.inv(gram)
        return (inverse @ (zw.transpose(-1, -2) @ target.unsqueeze(-1))).squeeze(-1), inverse
