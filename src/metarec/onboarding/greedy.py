"""The two greedy questionnaires: ``greedy-info`` (popular, informative and not redundant, on a Bayesian
linear model of matrix-factorisation item factors) and ``greedy-error`` (GreedyExtend: the items that cut
simulated newcomers' query error most). Both pick the first items one at a time, the rest by popularity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from metarec.onboarding.catalogue import item_statistics, newcomer_like_ratings, trained_catalogue
from metarec.tasks import ColdStartSplit
from metarec.tasks.taskset import rank_within


def greedy_information_order(split: ColdStartSplit, *, first: int = 200, factors: int = 16, reg: float = 10.0,
                             seed: int = 0) -> np.ndarray:
    """The ``greedy-info`` order of the trained catalogue (see the module docstring): the first ``first``
    items greedily, the rest by popularity.

    Model: a rating is ``x_i . w_u + noise`` with ``x_i = [1, q_i]`` (item factors of a matrix
    factorisation fitted on the training ratings) and ``w_u`` the user's bias and taste, prior
    ``N(0, s2 / penalty)``, ``s2`` the training residual variance. Asking item ``i`` is answered with
    probability ``p_i`` (its share of training users), and an answer brings ``0.5 log(1 + x_i' S x_i / s2)``
    nats about ``w_u``; after a pick, ``S`` takes the answer's update weighted by ``p_i`` (the expected
    posterior), so items along directions already covered lose value.
    """
    from metarec.baselines import MatrixFactorization, MatrixFactorizationConfig

    mf = MatrixFactorization(MatrixFactorizationConfig(factors=factors, reg=reg, seed=seed)).fit(split)
    stats = mf.stats
    catalogue = np.flatnonzero(stats.known_items)
    x = np.c_[np.ones(len(catalogue)), mf.item_params[catalogue, 1:]]
    n_users = max(int(stats.known_users.sum()), 1)
    p = stats.item_count[catalogue] / n_users
    # residual variance of the fitted model on the training ratings: the noise of one answer
    fitted = (stats.global_mean + mf.user_params[stats.user, 0] + mf.item_params[stats.item, 0]
              + np.einsum("nk,nk->n", mf.user_params[stats.user, 1:], mf.item_params[stats.item, 1:]))
    s2 = float(np.mean((stats.rating - fitted) ** 2)) or 1.0
    cov = np.diag(s2 / np.r_[mf.config.bias_reg, np.full(x.shape[1] - 1, mf.config.reg)])
    chosen: list[int] = []
    available = np.ones(len(catalogue), bool)
    for _ in range(min(first, len(catalogue))):
        sx = x @ cov  # [N, d]
        var = np.einsum("nd,nd->n", sx, x)
        value = np.where(available, p * 0.5 * np.log1p(var / s2), -np.inf)
        best = int(np.argmax(value))
        chosen.append(best)
        available[best] = False
        v = sx[best]
        cov = cov - p[best] * np.outer(v, v) / (s2 + var[best])
    rest = np.flatnonzero(available)
    rest = rest[np.lexsort((catalogue[rest], -stats.item_count[catalogue[rest]]))]
    return catalogue[np.r_[np.asarray(chosen, np.int64), rest]]


def greedy_extend_order(x: np.ndarray, penalty: np.ndarray, user: np.ndarray, item: np.ndarray,
                        residual: np.ndarray, catalogue: np.ndarray, popularity: np.ndarray, *, first: int = 100,
                        candidates: int = 400, max_users: int = 2000, query_size: int = 10, seed: int = 0,
                        query: np.ndarray | None = None, chunk: int = 8192) -> np.ndarray:
    """GreedyExtend (Golbandi et al., 2010) on a linear fold-in simulator: the order of ``catalogue`` whose
    first ``first`` items are picked one at a time to cut, the most, the simulated users' query error
    after the product's onboarding (they answer the shown items they rated; their taste offset is then
    folded in by ridge regression); the rest follow by ``popularity``.

    Simulator: user ``u`` rated item ``i`` with residual ``residual`` (rating minus the model's prior);
    folding in answers ``A`` solves ``delta_u = argmin sum_A (e_ui - x_i . delta)^2 + sum_j penalty_j
    delta_j^2``. Each user's ``query_size`` ratings (drawn with ``seed``; or the rows ``query`` marks)
    are scored, the others may be answered. The objective is the mean over users of the query mean
    squared error; the gain of asking ``c`` is summed over the users who would answer it, each through a
    Sherman-Morrison update, so a popular item gains from many users and an item that says what earlier
    picks said gains little.
    For speed, picks come from the ``candidates`` most popular items and ``max_users`` users (drawn with
    ``seed``) are simulated.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    residual = np.asarray(residual, np.float64)
    is_query = None if query is None else np.asarray(query, bool)
    distinct = np.unique(user)
    if len(distinct) > max_users:
        keep = np.isin(user, rng.choice(distinct, max_users, replace=False))
        user, item, residual = user[keep], item[keep], residual[keep]
        is_query = None if is_query is None else is_query[keep]
    users, user = np.unique(user, return_inverse=True)
    n_users = len(users)
    if is_query is None:  # a random query of query_size ratings per user (a light user: half its ratings)
        rank = np.empty(len(user), np.int64)
        by = np.lexsort((rng.random(len(user)), user))
        rank[by] = rank_within(user[by])
        is_query = rank < np.minimum(query_size, np.bincount(user, minlength=n_users) // 2)[user]
    u_q, i_q, e_q = (torch.as_tensor(a[is_query]) for a in (user, item, residual))
    xq = x[i_q]
    mq = torch.zeros(n_users, d, d, dtype=torch.float64).index_add_(0, u_q, xq.unsqueeze(2) * xq.unsqueeze(1))
    gq = torch.zeros(n_users, d, dtype=torch.float64).index_add_(0, u_q, xq * e_q.unsqueeze(1))
    nq = torch.bincount(u_q, minlength=n_users).to(torch.float64).clamp(min=1.0)
    in_catalogue = np.zeros(max(int(item.max(initial=0)), int(catalogue.max(initial=0))) + 1, bool)
    in_catalogue[catalogue] = True
    pool = ~is_query & in_catalogue[item]
    u_p, i_p, e_p = (torch.as_tensor(a[pool]) for a in (user, item, residual))
    ginv = torch.diag(1.0 / torch.as_tensor(penalty, dtype=torch.float64)).expand(n_users, d, d).clone()
    delta = torch.zeros(n_users, d, dtype=torch.float64)
    slope = gq.clone()  # gq - mq @ delta: half the SSE's negative gradient at delta
    by_popularity = catalogue[np.lexsort((catalogue, -popularity[catalogue]))]
    available = torch.zeros(len(in_catalogue), dtype=torch.bool)
    available[torch.as_tensor(by_popularity[:candidates])] = True
    chosen: list[int] = []
    for _ in range(min(first, candidates, len(catalogue))):
        gain = torch.zeros(len(in_catalogue), dtype=torch.float64)
        live = available[i_p].nonzero().squeeze(1)
        for start in range(0, len(live), chunk):
            rows = live[start:start + chunk]
            u, z = u_p[rows], x[i_p[rows]]
            s = (ginv[u] @ z.unsqueeze(2)).squeeze(2)
            step = s * ((e_p[rows] - (z * delta[u]).sum(1)) / (1.0 + (z * s).sum(1))).unsqueeze(1)
            sse_cut = 2.0 * (step * slope[u]).sum(1) - (step.unsqueeze(1) @ mq[u] @ step.unsqueeze(2)).reshape(-1)
            gain.index_add_(0, i_p[rows], sse_cut / nq[u])
        gain[~available] = -np.inf
        best = int(torch.argmax(gain))
        if not np.isfinite(float(gain[best])):
            break
        chosen.append(best)
        available[best] = False
        rows = (i_p == best).nonzero().squeeze(1)
        u, z = u_p[rows], x[best].expand(len(rows), d)
        s = (ginv[u] @ z.unsqueeze(2)).squeeze(2)
        denom = 1.0 + (z * s).sum(1)
        step = s * ((e_p[rows] - (z * delta[u]).sum(1)) / denom).unsqueeze(1)
        delta[u] += step
        ginv[u] -= s.unsqueeze(2) * s.unsqueeze(1) / denom.reshape(-1, 1, 1)
        slope[u] = gq[u] - (mq[u] @ delta[u].unsqueeze(2)).squeeze(2)
    chosen_arr = np.asarray(chosen, np.int64)
    return np.r_[chosen_arr, by_popularity[~np.isin(by_popularity, chosen_arr)]]


def greedy_error_order(split: ColdStartSplit, *, first: int = 100, seed: int = 0) -> np.ndarray:
    """The ``greedy-error`` questionnaire: :func:`greedy_extend_order` with a biased matrix factorisation
    (the benchmark's MF) as the simulator, out of sample: it is fitted on half of the meta-train users
    and the other half are the simulated newcomers (residual = rating - (mean + item bias), design
    [1, q_i], the MF's fold-in penalties). Fitted and simulated on the same users, the factors of rarely
    rated items would already fit the users who rated them, and the greedy would chase those items. Only
    simulated users with as many ratings as the validation newcomers (min to max) are kept."""
    from metarec.baselines import MatrixFactorization, MatrixFactorizationConfig

    train_users = np.unique(split.meta_train.user_idx)
    simulated = np.random.default_rng(seed).permutation(train_users)[: len(train_users) // 2]
    fitted = replace(split, meta_train=split.meta_train.subset(~np.isin(split.meta_train.user_idx, simulated)),
                     _cache={})
    mf = MatrixFactorization(MatrixFactorizationConfig(seed=seed)).fit(fitted)
    frame = newcomer_like_ratings(split)
    frame = frame[frame["user_idx"].isin(simulated)]
    user, item = frame["user_idx"].to_numpy(np.int64), frame["item_idx"].to_numpy(np.int64)
    residual = frame["rating"].to_numpy(np.float64) - mf.stats.global_mean - mf.item_params[item, 0]
    x = np.c_[np.ones(len(mf.item_params)), mf.item_params[:, 1:]]
    popularity = item_statistics(split)["count"].to_numpy(np.float64)
    return greedy_extend_order(x, mf.penalty, user, item, residual, trained_catalogue(split), popularity,
                               first=first, seed=seed)

