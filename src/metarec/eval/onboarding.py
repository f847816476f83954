"""Onboarding: which items to ask a new user to rate first, and an experiment that shows it matters.

Strategies give a global order of the items (the questionnaire). The offline simulation is the classic
one (Rashid et al., 2002): a held-out user walks down the order and "answers" the items they have
actually rated (from their support set), until ``n`` answers; the model adapts on those answers and is
scored on the user's query set (which no strategy may ask about). Every strategy draws from the same
per-user pool, so differences come from the order alone.

* ``random`` - a fresh random order per user;
* ``popular`` - most rated first;
* ``pop-entropy`` - log(popularity) x standard deviation of the item's ratings: popular *and* divisive
  items say the most about a taste (Rashid et al.'s Pop*Ent);
* ``melu-evidence`` - MeLU's evidence candidates: normalised popularity x the mean norm of the gradient
  a rating of the item causes in the adapted parameters at the meta-learned initialisation.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, grad, vmap

from metarec.eval.metrics import catalogue_ranking_metrics, mae_rmse
from metarec.meta.engine import MetaLearner, masked_mse
from metarec.tasks.splits import ColdStartSplit
from metarec.tasks.taskset import TaskBatch, TaskSet

STRATEGIES = ("random", "popular", "pop-entropy", "melu-evidence")


def item_statistics(split: ColdStartSplit) -> pd.DataFrame:
    """Training rating count, mean and standard deviation per item index (meta-train users only)."""
    train = split.train_ratings()
    stats = train.groupby("item_idx")["rating"].agg(["count", "mean", "std"])
    return stats.reindex(np.arange(split.dataset.n_items)).fillna({"count": 0, "mean": np.nan, "std": 0.0})


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

        def norm_one(f, t):
            g = grad(lambda p: masked_mse(learner._predict({**frozen, **p}, t, "support"), t["support_rating"], t["support_mask"]))(f)
            return torch.sqrt(sum((v ** 2).sum() for v in g.values()))

        norms[sl] = vmap(norm_one, in_dims=(None, 0), randomness="different")(fast, task).cpu().numpy()
    per_item = pd.Series(norms).groupby(train["item_idx"].to_numpy()).mean()
    return per_item.reindex(np.arange(split.dataset.n_items)).fillna(0.0).to_numpy()


def strategy_scores(strategy: str, split: ColdStartSplit, learner: MetaLearner | None = None) -> np.ndarray:
    """A score per item index; items are asked in decreasing score (``random`` is handled per user)."""
    stats = item_statistics(split)
    count = stats["count"].to_numpy(dtype=np.float64)
    if strategy == "popular":
        return count
    if strategy == "pop-entropy":
        return np.log1p(count) * stats["std"].fillna(0.0).to_numpy()
    if strategy == "melu-evidence":
        if learner is None:
            raise ValueError("melu-evidence needs the meta-learner")
        evidence = gradient_evidence(learner, split)
        pop = count / max(count.max(), 1.0)
        ev = evidence / max(evidence.max(), 1e-12)
        return pop * ev
    raise ValueError(f"unknown onboarding strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def questionnaire(tasks: TaskSet, order_score: np.ndarray | None, n: int, seed: int = 0) -> TaskSet:
    """Each task's support cut to the ``n`` items of its pool that come first in the order (random order
    per user when ``order_score`` is None); queries unchanged."""
    task = np.repeat(np.arange(len(tasks)), tasks.support_sizes)
    if order_score is None:
        key = np.random.default_rng(seed).random(len(tasks.support_item))
    else:
        key = -order_score[tasks.support_item] + 1e-9 * tasks.support_item  # ties: lower index first
    order = np.lexsort((key, task))
    rank = np.empty(len(order), np.int64)
    starts = np.r_[0, np.cumsum(tasks.support_sizes)[:-1]]
    rank[order] = np.arange(len(order)) - np.repeat(starts, tasks.support_sizes)
    return tasks.with_support(rank < n)


def onboarding_experiment(learner: MetaLearner, split: ColdStartSplit, *, scenario: str = "new_users",
                          validation: bool = False, n_values: Sequence[int] = (5, 10),
                          strategies: Sequence[str] = STRATEGIES, seed: int = 0) -> pd.DataFrame:
    """Query MAE / RMSE and full-catalogue nDCG@10 after adapting on each strategy's answers."""
    from metarec.eval.benchmark import MetaMethod

    tasks = (split.validation if validation else split.test)[scenario]
    method = MetaMethod("meta", None)  # type: ignore[arg-type]
    method.learner = learner
    stats = item_statistics(split)
    catalogue = np.flatnonzero(stats["count"].to_numpy() > 0)
    rows = []
    for strategy in strategies:
        scores = None if strategy == "random" else strategy_scores(strategy, split, learner)
        for n in n_values:
            asked = questionnaire(tasks, scores, n, seed)
            pred = method.predict("meta", asked)
            rating = mae_rmse(asked, pred)
            ranking = catalogue_ranking_metrics(method.scorer("meta", asked, catalogue), asked, catalogue,
                                                stats["count"].to_numpy(dtype=np.float64), 10)
            rows.append({"strategy": strategy, "n": n, "mae": rating["mae"], "rmse": rating["rmse"],
                         "ndcg@10": ranking["ndcg@10"], "recall@10": ranking["recall@10"],
                         "mean_answers": float(asked.support_sizes.mean()), "users": len(asked)})
    return pd.DataFrame(rows)


def choose_items(strategy: str, split: ColdStartSplit, learner: MetaLearner | None, n: int) -> np.ndarray:
    """The first ``n`` item indices of a strategy's questionnaire (trained items only)."""
    if strategy == "random":
        raise ValueError("a random questionnaire has no fixed items")
    scores = strategy_scores(strategy, split, learner)
    scores = np.where(item_statistics(split)["count"].to_numpy() > 0, scores, -np.inf)
    return np.argsort(-scores, kind="stable")[:n]
