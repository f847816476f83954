"""ML-1M + IMDb: the recipe as the search chose it against the earlier hand-written config, on validation users.

    METAREC_DATA_DIR=../shared/data python scripts/hand_config_tradeoff.py --seed 0   # ~5 min per row, 8 rows

With the whole support the recipe trails the hand-written config (presets/ml1m-imdb.toml) on test users by
0.003-0.005 (docs/results.md). This trains both on one seed's split, and the recipe with each of the hand
config's differences (fewer or no short supports, penalty rate 1 without its support-size slope, early
stopping on the whole support, a per-step average), one at a time and the first two together, and prints
validation query MAE at K = 1, 3, 5 and the whole support, new users and both new, and the score the recipe
and early stopping select on (the mean over new users and both new of K = 1, 3, 5, 10 and the whole
support). Test users are not scored. Results: docs/experiments/few-shot.md.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from few_shot_ablation import KS, SCENARIOS, validation_predictions

from metarec.data.loaders.registry import load_data
from metarec.eval.benchmark.method import selection_score
from metarec.meta.recipe import apply_setting, preset, recipe_base
from metarec.meta.trainer import Trainer
from metarec.tasks import make_split

# what the search chose on ML-1M + IMDb at d21cd24 (every seed), and the history multiple chosen after training
CHOSEN = (("model", "item_ids", "residual"), ("meta", "outer_lr", 0.001), ("model", "item_id_dropout", 0.0),
          ("meta", "query_loss", "absolute"), ("model", "history_penalty_scale", 4.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="", help="comma-separated row names (default: every row)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    recipe = recipe_base().override("data", dataset="ml-1m-imdb")
    for section, key, value in CHOSEN:
        recipe = apply_setting(recipe, section, key, value)
    dataset = load_data(recipe.data)
    split = make_split(dataset, recipe.override("split", seed=args.seed).split)
    variants = {"recipe as chosen": recipe,
                "a quarter of the supports short": recipe.override("train", short_support_fraction=0.25),
                "early stopping on the whole support": recipe.override("train", select_on="all"),
                "hand-written config": preset("ml1m-imdb").override("data", dataset="ml-1m-imdb"),
                # the hand config's other differences, one at a time from the recipe
                "no short supports": recipe.override("train", short_support_fraction=0.0),
                "penalty rate 1 without its support-size slope": recipe.override("model", penalty_rate=1.0,
                                                                                 penalty_by_support_size=False),
                "per-step average 0.999": recipe.override("train", average_epochs=0.0, average_decay=0.999),
                # the two few-shot parts of the recipe's base off together (early stopping still on the K-curve)
                "no short supports and penalty rate 1 without its slope": recipe.override(
                    "train", short_support_fraction=0.0).override("model", penalty_rate=1.0, penalty_by_support_size=False)}
    if args.variants:
        variants = {name: variants[name] for name in args.variants.split(",")}
    head = [f"{'new users' if s == 'new_users' else 'both new'} {'all' if k == 0 else f'K={k}'}"
            for s in SCENARIOS for k in KS]
    print("| validation MAE | " + " | ".join(head) + " | selection score |")
    print("|---|" + "---|" * (len(head) + 1))
    for name, config in variants.items():
        trainer = Trainer(config.override("train", seed=args.seed), split=split)
        trainer.fit()
        learner = trainer.restore_best()
        predictions = validation_predictions(learner.predict_tasks, split)
        cells = [float(np.abs(p - y).mean()) for p, y in (predictions[s, k] for s in SCENARIOS for k in KS)]
        score = selection_score(learner.predict_tasks, split, config.train.selection_support_sizes)
        print(f"| {name} | " + " | ".join(f"{c:.4f}" for c in cells) + f" | {score:.4f} |", flush=True)


if __name__ == "__main__":
    main()
