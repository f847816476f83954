"""Onboarding: which items to ask a new user to rate first, and an experiment that shows what it buys.

A strategy orders the *trained catalogue* (items meta-training saw) into a questionnaire. The offline
simulation follows the product (``GET /v1/onboarding?n=`` shows ``n`` items; the user rates those they
know), not an oracle that knows which items a user has seen:

* protocol ``shown`` (default): a held-out user is shown the first ``m`` items of the order (the budget
  is *items shown*) and answers those in their rated pool, i.e. their ratings outside the query set;
  the number of answers varies by user and strategy and is reported;
* protocol ``walk`` (Rashid et al., 2002): the user walks down the order until ``n`` answers (or the end
  of the catalogue); the effort, i.e. how many items they were shown, is reported.

A query item may be shown, but is never answered (the model is scored on it). The model adapts on the
answers and is scored on the query: MAE and full-catalogue nDCG@10 (candidates: every rated item minus
the answers). A user who answered nothing gets the model without adaptation (the meta-learned
initialisation), which is what the product would serve.

Strategies:

* ``random`` - a fresh random permutation of the catalogue per user (a questionnaire with no criterion);
* ``popular`` - most rated first: the items a newcomer most likely knows;
* ``pop-entropy`` - log(1 + popularity) x standard deviation of the item's ratings: popular *and*
  divisive (Rashid et al.'s Pop*Ent);
* ``melu-evidence`` - MeLU's evidence candidates: normalised popularity x normalised mean norm of the
  gradient one rating of the item causes in the adapted parameters at the meta-learned initialisation;
* ``greedy-info`` - popular *and* informative *and* not redundant: items are picked one at a time by
  P(the user knows it) x the information its rating would give about the user's taste vector (a
  Bayesian linear model on matrix-factorisation item factors, [1, q_i]), the posterior covariance
  updated after each pick by the expected answer; two items that say the same thing are not both asked;
* ``greedy-error`` - GreedyExtend (Golbandi et al., 2010): items picked one at a time by how much they cut
  the query error of simulated newcomers (meta-train users a matrix factorisation was not fitted on)
  after onboarding with the picks so far, their answers folded in by ridge regression;
* ``coverage`` - popularity among newcomer-like users, discounted per user: each user's next answer
  counts ``decay`` (0.75) times their previous one, so the questionnaire reaches users the earlier
  picks missed;
* ``adaptive`` - not one list but one per user: rounds of 10 items, each chosen from what the user knew
  in the earlier rounds, by a panel of newcomer-like training users reweighted by agreement with them
  (:mod:`metarec.serve.questionnaire`; what the service serves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.func import grad, vmap

from metarec.eval.metrics import RELEVANT_RATING, catalogue_ndcg_at_k, catalogue_recall_at_k
from metarec.meta.engine import MetaLearner, masked_mse
from metarec.serve.questionnaire import AdaptiveQuestionnaire, QuestionnaireConfig, who_rated
from metarec.tasks.splits import ColdStartSplit
from metarec.tasks.taskset import TaskBatch, TaskSet, rank_within

log = logging.getLogger(__name__)

STRATEGIES = ("random", "popular", "pop-entropy", "melu-evidence", "greedy-info", "greedy-error", "coverage",
              "adaptive")
PROTOCOLS = ("shown", "walk")
Progress = Callable[[str, int, int], None]  # (description, done, total)


# ---------------------------------------------------------------------- item statistics and orders
def item_statistics(split: ColdStartSplit) -> pd.DataFrame:
    """Training rating count, mean and standard deviation per item index (meta-train users only)."""
    train = split.train_ratings()
    stats = train.groupby("item_idx")["rating"].agg(["count", "mean", "std"])
    return stats.reindex(np.arange(split.dataset.n_items)).fillna({"count": 0, "mean": np.nan, "std": 0.0})


def trained_catalogue(split: ColdStartSplit) -> np.ndarray:
    """The items a questionnaire may show: those meta-training saw (sorted item indices)."""
    return np.flatnonzero(item_statistics(split)["count"].to_numpy() > 0)


def gradient_evidence(learner: MetaLearner, split: ColdStartSplit, *, max_pairs: int = 20000, seed: int = 0) -> np.ndarray:
    """Mean norm, per item, of the inner-loop gradient one rating of it causes (MeLU's evidence)."""
    train = split.train_ratings()
    rng = np.random.default_rng(seed)
    if len(train) > max_pairs:
        train = train.iloc[np.sort(rng.choice(len(train), max_pairs, replace=False))]
    device = next(learner.model.parameters()).device
    user = torch.as_tensor(train["user_idx"].to_numpy(copy=True), dtype=torch.long, device=device)
    item = torch.as_tensor(train["item_idx"].to_numpy(copy=True), dtype=torch.long, device=device).unsqueeze(1)
    rating = torch.as_tensor(train["rating"].to_numpy(copy=True), dtype=torch.float32, device=device).unsqueeze(1)
    norms = np.zeros(len(train))
    params = {n: p.detach() for n, p in learner.model.named_parameters()}
    fast, frozen = learner._split(params)
    for start in range(0, len(train), 2048):
        sl = slice(start, start + 2048)
        ones = torch.ones_like(rating[sl])
        batch = TaskBatch(user[sl], item[sl], rating[sl], ones, item[sl], rating[sl], ones)
        with torch.no_grad():
            task = learner.task_inputs(batch, params)
        task = {k: v for k, v in task.items() if k not in ("item_vec", "support_inv", "query_inv")}

        def norm_one(f, t):
            g = grad(lambda p: masked_mse(learner._predict({**frozen, **p}, t, "support"), t["support_rating"], t["support_mask"]))(f)
            return torch.sqrt(sum((v ** 2).sum() for v in g.values()))

        norms[sl] = vmap(norm_one, in_dims=(None, 0), randomness="different")(fast, task).cpu().numpy()
    per_item = pd.Series(norms).groupby(train["item_idx"].to_numpy()).mean()
    return per_item.reindex(np.arange(split.dataset.n_items)).fillna(0.0).to_numpy()


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


def newcomer_like_ratings(split: ColdStartSplit) -> pd.DataFrame:
    """Meta-train ratings of the users with as many ratings as the validation newcomers (min to max):
    who knows which item among people like the ones onboarding will meet. A heavy user knows far
    more rarely rated items than a newcomer does."""
    frame = split.train_ratings()
    held_out = split.validation.get("new_users")
    if held_out is None or not len(held_out):
        return frame
    sizes = held_out.support_sizes + held_out.query_sizes
    n = frame.groupby("user_idx")["rating"].transform("size")
    return frame[(n >= sizes.min()) & (n <= sizes.max())]


def coverage_order(user: np.ndarray, item: np.ndarray, catalogue: np.ndarray, popularity: np.ndarray, *,
                   decay: float = 0.75, first: int = 100) -> np.ndarray:
    """The ``coverage`` questionnaire: items picked one at a time by how many answers they would get
    from the users in (``user``, ``item``) - the pairs of who rated what -, each user's next answer
    worth ``decay`` times their previous one. ``decay`` = 1 is plain popularity; below 1 an item known
    to users who have no answer yet beats one known to the same users as earlier picks, because a
    first answer moves a newcomer's model most. After ``first`` picks, the rest by ``popularity``."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    n_items = max(int(item.max(initial=0)), int(catalogue.max(initial=0))) + 1
    rated = who_rated(user, item, n_items).tocsc()
    available = np.zeros(n_items, bool)
    available[catalogue] = True
    answers = np.zeros(rated.shape[0])
    chosen: list[int] = []
    for _ in range(min(first, len(catalogue))):
        gain = np.asarray(rated.T @ decay ** answers).ravel()
        gain[~available] = -1.0
        best = int(np.argmax(gain))  # ties: the lower item index
        chosen.append(best)
        available[best] = False
        answers[rated.indices[rated.indptr[best]:rated.indptr[best + 1]]] += 1.0
    chosen_arr = np.asarray(chosen, np.int64)
    rest = catalogue[~np.isin(catalogue, chosen_arr)]
    return np.r_[chosen_arr, rest[np.lexsort((rest, -popularity[rest]))]]


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
    from dataclasses import replace

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


def adaptive_questionnaire(split: ColdStartSplit, config: QuestionnaireConfig | None = None) -> AdaptiveQuestionnaire:
    """The ``adaptive`` strategy of a split: its panel is the newcomer-like meta-train users
    (:func:`newcomer_like_ratings`), its askable items the trained catalogue."""
    frame = newcomer_like_ratings(split)
    count = item_statistics(split)["count"].to_numpy(np.float64)
    return AdaptiveQuestionnaire(frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy(), split.dataset.n_items,
                                 np.flatnonzero(count > 0), count, config)  # askable: the trained catalogue


def answer_pools(tasks: TaskSet, n_items: int) -> np.ndarray:
    """[T, n_items] boolean: the items each task's user can rate when shown (support, never query)."""
    pools = np.zeros((len(tasks), n_items), bool)
    task = np.repeat(np.arange(len(tasks)), tasks.support_sizes)
    keep = ~_in_query(tasks)
    pools[task[keep], tasks.support_item[keep]] = True
    return pools


def strategy_order(strategy: str, split: ColdStartSplit, learner: MetaLearner | None = None) -> np.ndarray:
    """The questionnaire of a fixed strategy: trained catalogue item indices, first asked first
    (ties: lower item index first). ``random`` has no fixed order (see :func:`random_positions`);
    ``adaptive``'s is its first round's order, before any answer."""
    catalogue = trained_catalogue(split)
    if strategy == "adaptive":
        questionnaire = adaptive_questionnaire(split)
        return questionnaire.next_items(np.zeros(0, np.int64), np.zeros(0, np.int64), len(catalogue))
    if strategy == "greedy-info":
        return greedy_information_order(split)
    if strategy == "greedy-error":
        return greedy_error_order(split)
    if strategy == "coverage":
        frame = newcomer_like_ratings(split)
        count = item_statistics(split)["count"].to_numpy(np.float64)
        return coverage_order(frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy(), catalogue, count)
    stats = item_statistics(split)
    count = stats["count"].to_numpy(dtype=np.float64)
    if strategy == "popular":
        score = count
    elif strategy == "pop-entropy":
        score = np.log1p(count) * stats["std"].fillna(0.0).to_numpy()
    elif strategy == "melu-evidence":
        if learner is None:
            raise ValueError("melu-evidence needs the meta-learner")
        evidence = gradient_evidence(learner, split)
        score = (count / max(count.max(), 1.0)) * (evidence / max(evidence.max(), 1e-12))
    elif strategy == "random":
        raise ValueError("a random questionnaire has no fixed order: it is drawn per user")
    else:
        raise ValueError(f"unknown onboarding strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return catalogue[np.lexsort((catalogue, -score[catalogue]))]


def choose_items(strategy: str, split: ColdStartSplit, learner: MetaLearner | None, n: int) -> np.ndarray:
    """The first ``n`` item indices of a strategy's questionnaire (trained items only)."""
    return strategy_order(strategy, split, learner)[:n]


def positions_from_order(order: np.ndarray, n_items: int) -> np.ndarray:
    """``position[item]``: where the item comes in the questionnaire (n_items+ for items never shown)."""
    position = np.full(n_items, np.iinfo(np.int64).max, np.int64)
    position[order] = np.arange(len(order))
    return position


def random_positions(catalogue: np.ndarray, n_items: int, n_tasks: int, seed: int) -> np.ndarray:
    """[n_tasks, n_items] positions: for each task an independent uniform permutation of ``catalogue``."""
    rng = np.random.default_rng(seed)
    out = np.full((n_tasks, n_items), np.iinfo(np.int64).max, np.int64)
    for t in range(n_tasks):
        out[t, catalogue] = rng.permutation(len(catalogue))
    return out


# ---------------------------------------------------------------------- simulation
@dataclass(frozen=True)
class Questionnaire:
    """The outcome of onboarding every task: the tasks with support = the answers, and per task how many
    items were shown and answered."""

    tasks: TaskSet
    shown: np.ndarray  # [T] items shown
    answers: np.ndarray  # [T] items answered (= support size)


def simulate(tasks: TaskSet, position: np.ndarray, budget: int, protocol: str = "shown",
             catalogue_size: int | None = None) -> Questionnaire:
    """Onboard every task of ``tasks``: ``position`` is [n_items] (one questionnaire for all) or
    [T, n_items] (one per task); the pool a user can answer from is the task's support set (their
    ratings outside the query). ``shown``: the first ``budget`` items are shown; ``walk``: items are
    shown until ``budget`` answers (or the catalogue, ``catalogue_size`` items, runs out)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown onboarding protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    never = np.iinfo(np.int64).max
    task = np.repeat(np.arange(len(tasks)), tasks.support_sizes)
    pos = position[tasks.support_item] if position.ndim == 1 else position[task, tasks.support_item]
    if catalogue_size is None:
        first = position if position.ndim == 1 else position[0]
        catalogue_size = int((first < never).sum())
    pos = np.where(_in_query(tasks), never, pos)  # a query item may be shown but is never answered
    if protocol == "shown":
        keep = pos < budget
        shown = np.full(len(tasks), min(budget, catalogue_size), np.int64)
    else:
        order = np.lexsort((pos, task))  # by task, then by when the item is shown
        rank = np.empty(len(order), np.int64)
        rank[order] = rank_within(task[order])
        keep = (rank < budget) & (pos < never)
        # shown: up to the last answer; without ``budget`` answers, the whole catalogue
        shown = np.full(len(tasks), catalogue_size, np.int64)
        last = np.zeros(len(tasks), np.int64)
        np.maximum.at(last, task[keep], pos[keep] + 1)
        enough = np.bincount(task[keep], minlength=len(tasks)) >= budget
        shown[enough] = last[enough]
    asked = tasks.with_support(keep)
    return Questionnaire(asked, shown, asked.support_sizes.copy())


def _in_query(tasks: TaskSet) -> np.ndarray:
    """Per support row: whether the item is also in the task's query (never true for a clean split)."""
    task = np.repeat(np.arange(len(tasks)), tasks.support_sizes)
    q_task = np.repeat(np.arange(len(tasks)), tasks.query_sizes)
    width = int(max(tasks.support_item.max(initial=0), tasks.query_item.max(initial=0))) + 1
    return np.isin(task * width + tasks.support_item, q_task * width + tasks.query_item)


# ---------------------------------------------------------------------- scoring
def _batches(tasks: TaskSet, size: int, device: torch.device):
    """Padded batches; a batch where nobody answered keeps one masked support column (the model then
    sees no rating and takes no effective inner step: the meta-learned initialisation)."""
    packed = tasks.packed()
    for start in range(0, len(tasks), size):
        batch = packed.select(torch.arange(start, min(start + size, len(tasks))))
        if batch.support_item.shape[1] == 0:
            zeros = torch.zeros(len(batch), 1)
            batch = TaskBatch(batch.user_idx, zeros.long(), zeros, zeros, batch.query_item, batch.query_rating,
                              batch.query_mask)
        yield start, batch.to(device)


def per_user_scores(learner: MetaLearner, tasks: TaskSet, candidates: np.ndarray, *, k: int = 10,
                    steps: int | None = None, batch_size: int = 128) -> pd.DataFrame:
    """Per task, after adapting on its support: query MAE, squared error, full-catalogue nDCG@k and
    recall@k (candidates minus the task's support; relevant: query items rated >= 4)."""
    device = next(learner.model.parameters()).device
    learner.model.eval()
    candidates = np.unique(candidates)
    items = torch.as_tensor(candidates, dtype=torch.long, device=device)
    vec = learner.catalogue_vectors(items)
    mae = np.full(len(tasks), np.nan)
    mse = np.full(len(tasks), np.nan)
    ndcg = np.full(len(tasks), np.nan)
    recall = np.full(len(tasks), np.nan)
    for start, batch in _batches(tasks, batch_size, device):
        adapted, task = learner.adapt(batch, steps)
        with torch.no_grad():
            scores = learner.predict_items(adapted, task, items, vec).cpu().numpy()
        pred = learner.predict_query(batch, steps).cpu().numpy()
        for b in range(len(batch)):
            t = start + b
            q_items, q_ratings = tasks.query_of(t)
            err = pred[b, : len(q_items)] - q_ratings
            mae[t], mse[t] = np.abs(err).mean(), (err ** 2).mean()
            s_items, _ = tasks.support_of(t)
            keep = ~np.isin(candidates, s_items)
            relevant = q_items[q_ratings >= RELEVANT_RATING]
            ndcg[t] = catalogue_ndcg_at_k(scores[b][keep], candidates[keep], relevant, k)
            recall[t] = catalogue_recall_at_k(scores[b][keep], candidates[keep], relevant, k)
    return pd.DataFrame({"mae": mae, "mse": mse, f"ndcg@{k}": ndcg, f"recall@{k}": recall,
                         "query": tasks.query_sizes})


# ---------------------------------------------------------------------- the experiment
@dataclass
class OnboardingResult:
    """Long rows (one per strategy x budget x seed) and per-user scores for paired comparisons."""

    rows: pd.DataFrame
    per_user: dict[tuple[str, int, int], pd.DataFrame]
    users: str
    scenario: str
    protocol: str


def onboarding_experiment(learner: MetaLearner, split: ColdStartSplit, *, scenario: str = "new_users",
                          validation: bool = False, budgets: Sequence[int] = (10, 20, 50),
                          strategies: Sequence[str] = STRATEGIES, protocol: str = "shown",
                          seeds: Sequence[int] = (0, 1, 2), k: int = 10,
                          progress: Progress | None = None) -> OnboardingResult:
    """Every strategy x budget on held-out users (test, or validation to choose): query MAE / RMSE and
    full-catalogue nDCG@k after adapting on the answers; ``random`` once per seed."""
    tasks = (split.validation if validation else split.test)[scenario]
    if not len(tasks):
        raise ValueError(f"no {'validation' if validation else 'test'} tasks in scenario {scenario!r}")
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown onboarding strategy {sorted(unknown)[0]!r}; known: {', '.join(STRATEGIES)}")
    n_items = split.dataset.n_items
    catalogue = trained_catalogue(split)
    rated = np.zeros(n_items, bool)
    rated[split.dataset.ratings["item_idx"].to_numpy()] = True
    candidates = np.flatnonzero(rated)  # as the benchmark's full-catalogue ranking
    runs = [(s, seed) for s in strategies for seed in (seeds if s == "random" else (0,))]
    total = len(runs) * len(budgets)
    rows, per_user, done = [], {}, 0
    for strategy, seed in runs:
        if strategy == "random":
            position = random_positions(catalogue, n_items, len(tasks), seed)
        elif strategy == "adaptive":
            position = adaptive_questionnaire(split).positions(answer_pools(tasks, n_items))
        else:
            position = positions_from_order(strategy_order(strategy, split, learner), n_items)
        for budget in budgets:
            if progress:
                progress(f"{strategy} {protocol} {budget}", done, total)
            q = simulate(tasks, position, budget, protocol, len(catalogue))
            scores = per_user_scores(learner, q.tasks, candidates, k=k)
            scores["answers"], scores["shown"] = q.answers, q.shown
            per_user[(strategy, budget, seed)] = scores
            w = scores["query"].to_numpy()
            rows.append({"strategy": strategy, "budget": budget, "seed": seed, "users": len(tasks),
                         "mean_answers": float(q.answers.mean()), "no_answer_users": int((q.answers == 0).sum()),
                         "mean_shown": float(q.shown.mean()),
                         "mae": float(np.average(scores["mae"], weights=w)),
                         "rmse": float(np.sqrt(np.average(scores["mse"], weights=w))),
                         f"ndcg@{k}": float(np.nanmean(scores[f"ndcg@{k}"])),
                         f"recall@{k}": float(np.nanmean(scores[f"recall@{k}"]))})
            done += 1
    if progress:
        progress("done", total, total)
    return OnboardingResult(pd.DataFrame(rows), per_user, "validation" if validation else "test", scenario, protocol)


def pool_results(results: Sequence[OnboardingResult]) -> OnboardingResult:
    """Several experiments (e.g. one per split seed) as one, their users side by side, so that
    :func:`summarise` bootstraps over all of them: each result must hold the same strategy x budget x
    seed runs on the same kind of users."""
    if not results:
        raise ValueError("nothing to pool")
    keys = set(results[0].per_user)
    for r in results[1:]:
        if set(r.per_user) != keys or (r.users, r.scenario, r.protocol) != (results[0].users, results[0].scenario,
                                                                             results[0].protocol):
            raise ValueError("pooled results must hold the same runs on the same users, scenario and protocol")
    per_user = {key: pd.concat([r.per_user[key] for r in results], ignore_index=True) for key in sorted(keys)}
    rows = []
    for i, r in enumerate(results):
        rows.append(r.rows.assign(experiment=i))
    return OnboardingResult(pd.concat(rows, ignore_index=True), per_user, results[0].users, results[0].scenario,
                            results[0].protocol)


def summarise(result: OnboardingResult, *, k: int = 10, draws: int = 2000, seed: int = 0,
              references: Sequence[str] = ("random", "popular")) -> pd.DataFrame:
    """One row per strategy x budget: means (random: over seeds, with the seeds' standard deviation), and
    for each reference strategy the mean per-user difference (this - reference) of MAE and nDCG@k with a
    paired bootstrap 95% interval over users (random: seed-averaged per user)."""
    metric = f"ndcg@{k}"
    rng = np.random.default_rng(seed)
    out = []
    for (strategy, budget), group in result.rows.groupby(["strategy", "budget"], sort=False):
        row = {"strategy": strategy, "budget": int(budget), "seeds": len(group)}
        for col in ("mean_answers", "no_answer_users", "mean_shown", "mae", "rmse", metric):
            row[col] = float(group[col].mean())
        row["mae_sd_seeds"] = float(group["mae"].std(ddof=1)) if len(group) > 1 else float("nan")
        row[f"{metric}_sd_seeds"] = float(group[metric].std(ddof=1)) if len(group) > 1 else float("nan")
        mine = _user_means(result, strategy, int(budget), metric)
        for reference in references:
            base = _user_means(result, reference, int(budget), metric)
            if base is None or strategy == reference:
                continue
            for col in ("mae", metric):
                diff = (mine[col] - base[col]).to_numpy()
                diff = diff[~np.isnan(diff)]
                boots = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(1)
                low, high = np.quantile(boots, [0.025, 0.975])
                row[f"{col}_vs_{reference}"] = float(diff.mean())
                row[f"{col}_vs_{reference}_ci"] = (float(low), float(high))
        out.append(row)
    return pd.DataFrame(out)


def _user_means(result: OnboardingResult, strategy: str, budget: int, metric: str) -> pd.DataFrame | None:
    frames = [v[["mae", metric]] for (s, b, _), v in result.per_user.items() if s == strategy and b == budget]
    if not frames:
        return None
    return sum(frames) / len(frames)  # NaN nDCG (no relevant query item) is the same users in every run
