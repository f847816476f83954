"""Is there headroom over MF fold-in for new users at K = 1-5? Four probes on validation users only.

    METAREC_DATA_DIR=../shared/data python scripts/few_shot_limits.py --dataset ml-100k --seeds 0,1,2

Rows (query MAE, mean over seeds, the recipe's base everywhere):

* ``mf fold-in``: the benchmark's MF, its grid chosen on these validation users;
* ``base``: the recipe's base (no search), one initialisation;
* ``ensemble of M``: the mean prediction of M initialisations of the base (what averaging models buys);
* ``blend W base + (1 - W) mf``: the base's and MF fold-in's predictions mixed (what a hybrid with the
  strongest baseline buys);
* ``base, running average over 10 epochs`` / ``base, outer_lr 0.001``: one model with less noise in its
  meta-steps (does it get what the ensemble gets?);
* ``base from MF``: the base started *at* MF fold-in (item id vectors = a 32-factor MF's item factors and
  biases, the towers' last layers zero, the penalty = MF's), then meta-trained: at epoch 0 it predicts what
  that MF predicts for a new user (printed as ``base from MF, untrained``);
* ``... rounded``: each method's predictions rounded to the nearest rating. MAE on integer ratings rewards
  predicting a median, and rounding alone moves every method more than any gap between them. No method in
  the benchmark rounds; this row says how much of an MAE gap such an output transform could hide.
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import torch
from few_shot_ablation import KS, SCENARIOS, validation_predictions
from torch import nn

from metarec.baselines.mf import MatrixFactorization, MatrixFactorizationConfig
from metarec.data.loaders.registry import load_data
from metarec.eval.benchmark import BenchmarkConfig, make_method
from metarec.meta.recipe import recipe_base
from metarec.meta.trainer import Trainer
from metarec.tasks import make_split


BLEND_WEIGHTS = (0.5, 0.7)


def start_at_mf(trainer: Trainer, mf: MatrixFactorization) -> None:
    """Set a residual-id-vector NeuralCF so that, untrained, its fold-in is ``mf``'s fold-in of a new user."""
    model = trainer.learner.model
    factors, items = model.factors, mf.item_params
    vectors = torch.zeros(model.n_items, factors + 1)
    vectors[:, : items.shape[1] - 1] = torch.tensor(items[:, 1:])
    vectors[:, factors] = torch.tensor(items[:, 0])
    log_penalty = torch.full((factors + 1,), math.log(mf.config.reg))
    log_penalty[factors] = math.log(mf.config.bias_reg)
    with torch.no_grad():
        model.item_id.weight.copy_(vectors)
        for tower in (model.item_tower, model.head["user_tower"]):
            last = [m for m in tower if isinstance(m, nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()
        model.head["bias"].weight.fill_(mf.stats.global_mean - float(model.rating_center))
        model.head["log_reg"].weight.copy_((log_penalty / model.penalty_rate)[None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--members", type=int, default=5, help="initialisations in the ensemble row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = recipe_base().override("data", dataset=args.dataset)
    dataset = load_data(base.data)
    rows: dict[str, list[dict]] = {}

    def add(name: str, predictions: dict) -> None:
        rows.setdefault(name, []).append({key: float(np.abs(p - y).mean()) for key, (p, y) in predictions.items()})
        rows.setdefault(f"{name}, rounded", []).append(
            {key: float(np.abs(np.round(p) - y).mean()) for key, (p, y) in predictions.items()})

    for seed in (int(s) for s in args.seeds.split(",")):
        split = make_split(dataset, base.override("split", seed=seed).split)
        mf_method = make_method("mf", BenchmarkConfig(run=base, seeds=(seed,)), seed)
        mf_method.fit(split)
        mf_predictions = validation_predictions(lambda t: mf_method.predict("mf", t), split)
        add("mf fold-in", mf_predictions)
        members = []
        for member in range(args.members):
            trainer = Trainer(base.override("train", seed=seed + 1000 * member), split=split)
            trainer.fit()
            members.append(validation_predictions(trainer.restore_best().predict_tasks, split))
        add("base", members[0])
        for weight in BLEND_WEIGHTS:
            add(f"blend {weight} base + {1 - weight:.1f} mf", {
                key: (weight * p + (1 - weight) * mf_predictions[key][0], y) for key, (p, y) in members[0].items()})
        add(f"ensemble of {args.members}", {key: (np.mean([m[key][0] for m in members], axis=0), members[0][key][1])
                                            for key in members[0]})
        mf32 = MatrixFactorization(MatrixFactorizationConfig(factors=base.model.factors, reg=10.0, bias_reg=10.0,
                                                             seed=seed)).fit(split)
        # what an ensemble buys, from one model: less noise in its steps, or a longer average of them
        for name, cfg in (("base, running average over 10 epochs", base.override("train", average_epochs=10.0)),
                          ("base, outer_lr 0.001", base.override("meta", outer_lr=0.001))):
            trainer = Trainer(cfg.override("train", seed=seed), split=split)
            trainer.fit()
            add(name, validation_predictions(trainer.restore_best().predict_tasks, split))
        warm = base.override("train", seed=seed).override("model", item_id_residual=True)
        trainer = Trainer(warm, split=split)
        start_at_mf(trainer, mf32)
        add("base from MF, untrained", validation_predictions(trainer.learner.predict_tasks, split))
        trainer.fit()
        add("base from MF", validation_predictions(trainer.restore_best().predict_tasks, split))
        print(f"seed {seed} done", flush=True)
    head = [f"{'new users' if s == 'new_users' else 'both new'} {'all' if k == 0 else f'K={k}'}"
            for s in SCENARIOS for k in KS]
    print("| validation MAE | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for name in sorted(rows, key=lambda n: n.endswith("rounded")):
        per_seed = rows[name]
        cells = [np.mean([r[s, k] for r in per_seed if (s, k) in r]) for s in SCENARIOS for k in KS]
        print(f"| {name} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
