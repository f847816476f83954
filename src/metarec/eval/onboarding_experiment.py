"""The onboarding experiment: what each questionnaire strategy buys on held-out users.

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

The strategies themselves are :mod:`metarec.onboarding.strategies`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from metarec.eval.metrics import RELEVANT_RATING, catalogue_ndcg_at_k, catalogue_recall_at_k
from metarec.meta import MetaLearner
from metarec.onboarding.catalogue import trained_catalogue
from metarec.onboarding.strategies import STRATEGIES, adaptive_questionnaire, check_strategies, strategy_order
from metarec.tasks import ColdStartSplit, TaskBatch, TaskSet
from metarec.tasks.taskset import rank_within

log = logging.getLogger(__name__)

PROTOCOLS = ("shown", "walk")
Progress = Callable[[str, int, int], None]  # (description, done, total)


def check_protocol(protocol: str) -> None:
    """Raise ``ValueError`` for an unknown protocol, before any strategy is computed."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown onboarding protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def answer_pools(tasks: TaskSet, n_items: int) -> np.ndarray:
    """[T, n_items] boolean: the items each task's user can rate when shown (support, never query)."""
    pools = np.zeros((len(tasks), n_items), bool)
    task = np.repeat(np.arange(len(tasks)), tasks.support_sizes)
    keep = ~_in_query(tasks)
    pools[task[keep], tasks.support_item[keep]] = True
    return pools


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
    check_protocol(protocol)
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
    check_strategies(strategies)
    check_protocol(protocol)
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
