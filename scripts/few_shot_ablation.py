"""Why the meta-learner lost at small K, and which change fixed what: the recipe's few-shot parts switched on
one at a time, scored on validation users only (never test users) beside the bias and MF fold-ins.

    METAREC_DATA_DIR=../shared/data python scripts/few_shot_ablation.py --dataset ml-100k --seeds 0,1,2

Prints one row per variant: validation query MAE at K = 1, 3, 5 and the whole support, new users and
both new, mean over seeds (the fold-in baselines scored on the same validation tasks; their grids are
chosen on those users too, which can only favour them).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from metarec.data.loaders.registry import load_data
from metarec.eval.benchmark import BenchmarkConfig, make_method
from metarec.meta.recipe import recipe_base
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer
from metarec.tasks import make_split

SCENARIOS = ("new_users", "new_users_new_items")
KS = (1, 3, 5, 0)  # 0: the whole support


def variants(base: RunConfig) -> dict[str, RunConfig]:
    """Cumulative: each row adds one of the few-shot changes to the one before."""
    before = (base.override("train", short_support_fraction=0.0, select_on="all", average_epochs=0.0)
              .override("model", penalty_rate=1.0, penalty_by_support_size=False))
    short = before.override("train", short_support_fraction=0.5)
    penalty = short.override("model", penalty_rate=10.0, penalty_by_support_size=True)
    curve = penalty.override("train", select_on="k-curve")
    return {"long supports only (before)": before, "+ short meta-train supports": short,
            "+ penalty rate 10 and its support-size slope": penalty, "+ selection on the K-curve": curve,
            "+ running average (the recipe's base)": base}


def validation_predictions(predict, split) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """{(scenario, K): (predictions, ratings)} on the validation tasks (K = 0: the whole support)."""
    out = {}
    for k in KS:
        tasks_of = split.validation if k == 0 else split.validation_with_support_size(k)
        for scenario in SCENARIOS:
            tasks = tasks_of.get(scenario)
            if tasks is not None and len(tasks):
                out[scenario, k] = (np.asarray(predict(tasks), dtype=np.float64), tasks.query_rating)
    return out


def scores(predict, split) -> dict[tuple[str, int], float]:
    """{(scenario, K): validation query MAE}."""
    return {key: float(np.abs(p - y).mean()) for key, (p, y) in validation_predictions(predict, split).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = recipe_base().override("data", dataset=args.dataset)
    dataset = load_data(base.data)
    rows: dict[str, list[dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        split = make_split(dataset, base.override("split", seed=seed).split)
        bench = BenchmarkConfig(run=base, seeds=(seed,))
        for name in ("bias", "mf"):
            method = make_method(name, bench, seed)
            method.fit(split)
            rows.setdefault(f"{name} fold-in", []).append(scores(lambda t, m=method, n=name: m.predict(n, t), split))
        for name, cfg in variants(base).items():
            trainer = Trainer(cfg.override("train", seed=seed), split=split)
            trainer.fit()
            learner = trainer.restore_best()
            rows.setdefault(name, []).append(scores(lambda t: learner.predict_tasks(t), split))
        print(f"seed {seed} done", flush=True)
    head = [f"{'new users' if s == 'new_users' else 'both new'} {'all' if k == 0 else f'K={k}'}"
            for s in SCENARIOS for k in KS]
    print("| validation MAE | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for name, per_seed in rows.items():
        cells = [np.mean([r[s, k] for r in per_seed if (s, k) in r]) for s in SCENARIOS for k in KS]
        print(f"| {name} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
