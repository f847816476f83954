"""A trained implicit-feedback model measured on its own split's test users (``metarec evaluate`` of a run
trained with ``--feedback implicit``): the implicit benchmark's ranking metrics, without training anything.

Why: an implicit model predicts no ratings, so MAE does not apply; what it is for is ranking the whole
catalogue for a user with a few positives. This scores the checkpoint exactly as serving does (the
closed-form fold-in, then the new items' order by attribute similarity with the weight kept in the
checkpoint) and exactly as the benchmark measures (each scenario's catalogue, the support excluded, the
K-curve with the same seeded draws), so its numbers are the benchmark's ``meta`` row for this model.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch

from metarec.errors import MetarecError
from metarec.eval.implicit.config import ImplicitBenchmarkConfig
from metarec.eval.implicit.method import support_positives
from metarec.eval.implicit.metrics import scenario_catalogue
from metarec.eval.implicit.run import mean_over_draws, rank_scores
from metarec.meta.checkpoint import Checkpoint
from metarec.meta.implicit import catalogue_scores
from metarec.models.new_item_order import trained_order
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (scenario, steps done, steps)


def checkpoint_scorer(checkpoint: Checkpoint, members: Sequence[Checkpoint] = ()) -> Callable[[TaskSet], np.ndarray]:
    """Scores [tasks, catalogue] of an implicit checkpoint, as serving computes them (an ensemble's other
    ``members``: the mean of the members' scores, then the new items' order the first checkpoint keeps)."""
    learners, features = [checkpoint.learner, *(m.learner for m in members)], checkpoint.features
    order = trained_order(checkpoint.state, features.item_features, features.item_encoder,
                          features.known_items.cpu().numpy())

    def score(tasks: TaskSet) -> np.ndarray:
        with torch.no_grad():
            scores = catalogue_scores(learners[0], tasks)
            if len(learners) > 1:
                scores = np.mean([scores, *(catalogue_scores(learner, tasks) for learner in learners[1:])], axis=0)
        if order is None:
            return scores
        ptr, item, _ = support_positives(tasks)
        return order.apply(scores, ptr, item)

    return score


def evaluate_implicit_run(checkpoint: Checkpoint, split: ColdStartSplit,
                          config: ImplicitBenchmarkConfig | None = None,
                          progress: Progress | None = None, members: Sequence[Checkpoint] = ()
                          ) -> dict[str, dict[str, dict[str, float]]]:
    """{scenario: {"all" | "k<K>": {metric: mean over test users, "tasks": users scored}}} on ``split``'s
    test tasks, with the whole support and cut to each K of ``config.support_sizes`` (the mean over
    ``config.support_draws`` seeded draws; users with fewer than K positives are left out at that K)."""
    if not checkpoint.model_config.implicit:
        raise MetarecError("an explicit-feedback model predicts ratings: evaluate it by MAE (metarec evaluate)")
    config = config or ImplicitBenchmarkConfig()
    score = checkpoint_scorer(checkpoint, members)
    cuts: dict[str, list[ColdStartSplit]] = {"all": [split]}
    cuts.update({f"k{k}": [split.with_support_size(k, d) for d in range(config.support_draws)]
                 for k in config.support_sizes})
    scenarios = [s for s in config.scenarios if len(split.test.get(s, ()))]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for i, scenario in enumerate(scenarios):
        if progress:
            progress(scenario, i, len(scenarios))
        catalogue = scenario_catalogue(split, scenario)
        for point, draws in cuts.items():
            tasks = [cut.test.get(scenario) for cut in draws]
            if tasks[0] is None or not len(tasks[0]):
                continue
            rankings = [rank_scores(score, t, catalogue, config.ks) for t in tasks]
            row = {metric: _mean(mean_over_draws([r.per_task[metric] for r in rankings]))
                   for metric in rankings[0].per_task}
            row["tasks"] = float((~np.isnan(rankings[0].per_task["mrr"])).sum())
            out.setdefault(scenario, {})[point] = row
        log.info("implicit evaluation, %s: %s", scenario, {p: round(v.get("ndcg@20", np.nan), 4)
                                                          for p, v in out.get(scenario, {}).items()})
    if progress:
        progress("done", len(scenarios), len(scenarios))
    return out


def _mean(values: Any) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")
