"""Choose the adaptive questionnaire's settings on validation users only (how QuestionnaireConfig's
defaults were chosen; docs/onboarding.md).

For a ``metarec train`` run, every round size x mismatch is simulated on the validation newcomers under
the ``shown`` protocol and scored like ``metarec onboard --experiment``: mean answers and query MAE
after adapting on them, next to ``popular``. Test users are never touched. Example:

    python scripts/onboarding_sweep.py runs/ml1m --round-sizes 1,2,5,10 --mismatches 0.3,0.1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from metarec.data import load_dataset
from metarec.eval.onboarding_experiment import answer_pools, per_user_scores, positions_from_order, simulate
from metarec.onboarding.catalogue import trained_catalogue
from metarec.onboarding.strategies import adaptive_questionnaire, strategy_order
from metarec.meta.run import RunConfig
from metarec.meta.trainer import load_best
from metarec.onboarding.questionnaire import QuestionnaireConfig
from metarec.tasks import make_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of `metarec train`")
    parser.add_argument("--round-sizes", default="1,2,5,10")
    parser.add_argument("--mismatches", default="0.3,0.1")
    parser.add_argument("--budgets", default="10,20,50")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = RunConfig.from_toml(args.run / "config.toml")
    split = make_split(load_dataset(config.data.dataset, data_dir=config.data.data_dir), config.split)
    learner = load_best(args.run).learner
    tasks = split.validation["new_users"]
    n_items = split.dataset.n_items
    catalogue = trained_catalogue(split)
    rated = np.zeros(n_items, bool)
    rated[split.dataset.ratings["item_idx"].to_numpy()] = True
    candidates = np.flatnonzero(rated)
    pools = answer_pools(tasks, n_items)
    budgets = [int(b) for b in args.budgets.split(",")]

    def report(name: str, position: np.ndarray) -> None:
        cells = []
        for budget in budgets:
            q = simulate(tasks, position, budget, "shown", len(catalogue))
            scores = per_user_scores(learner, q.tasks, candidates)
            mae = np.average(scores["mae"], weights=scores["query"])
            cells.append(f"{budget}: {q.answers.mean():.2f} answers, MAE {mae:.4f}")
        print(f"{name:24s}", " | ".join(cells), flush=True)

    print(f"{len(tasks)} validation users")
    report("popular", positions_from_order(strategy_order("popular", split), n_items))
    for size in (int(x) for x in args.round_sizes.split(",")):
        for mismatch in (float(x) for x in args.mismatches.split(",")):
            questionnaire = adaptive_questionnaire(split, QuestionnaireConfig(mismatch=mismatch, round_size=size))
            report(f"r={size} mismatch={mismatch}", questionnaire.positions(pools))


if __name__ == "__main__":
    main()
