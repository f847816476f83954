"""Compare meta-learner settings on validation users only (how configs/*.toml were chosen).

Each variant overrides the base config (``section.field=value``, comma-separated; values are JSON),
is meta-trained with early stopping on the seed's split, and prints its validation MAE per scenario.
Test users are never touched. Example (the sweep behind configs/ml1m-imdb.toml's resample_query):

    python scripts/validation_sweep.py --dataset ml-1m-imdb --config configs/ml1m-imdb.toml --seed 0 \\
        --mf --variant "" --variant "train.resample_query=false"

``--known-new-items`` adds a proxy for the benchmark's new-item scenario (see known_users_on_new_items).
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch

from metarec.data.loaders.registry import load_dataset
from metarec.eval.benchmark import BenchmarkConfig, make_method
from metarec.eval.metrics import mae_rmse
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer, validation_mae
from metarec.tasks import add_user_history, make_split
from metarec.tasks.taskset import TaskSet


def apply(config: RunConfig, variant: str) -> RunConfig:
    # split on the commas that start another "section.field=", so list values may hold commas
    for part in filter(None, (p.strip() for p in re.split(r",\s*(?=[a-z_]+\.[a-z_]+=)", variant))):
        key, value = part.split("=", 1)
        section, field = key.split(".")
        parsed = json.loads(value)
        config = config.override(section, **{field: tuple(parsed) if isinstance(parsed, list) else parsed})
    return config


def known_users_on_new_items(split) -> TaskSet | None:
    """Validation users' new-item tasks with their old-item ratings as the known history: the benchmark's
    new-item scenario (meta-train users rating new items, adapted with their history) has no validation
    tasks of its own, and this is the closest thing made of validation users only."""
    both, old = split.validation.get("new_users_new_items"), split.validation.get("new_users")
    if both is None or old is None or not len(both):
        return None
    return both.with_history(old)


def heavy_users_on_new_items(split, seed: int = 0) -> TaskSet | None:
    """Known users with long histories rating new items (see ``ColdStartSplit.heavy_new_item_tasks``)."""
    return split.heavy_new_item_tasks(seed)


def pooled_history_sweep(split, bench: BenchmarkConfig, heavy: TaskSet, methods: list[str], limits: list[int]) -> None:
    """The history rule in the benchmark's two settings, on the heavy users' new-item tasks: strict (each
    task alone) and pooled (new items folded in from all these tasks' support sets, with the penalty
    scale each method chooses on validation users, as ``metarec benchmark --item-fold-in`` does)."""
    for name in methods:
        method = make_method(name, bench, bench.run.train.seed)
        method.fit(split)
        method.choose_pool_scale(split)
        variant = method.adapting_variant() if hasattr(method, "adapting_variant") else name
        # baselines: their trained users; a neural method: each rule, history in the support or as the prior
        rules = [(None, False), *((k, False) for k in limits), (None, True)] if hasattr(method, "history_max_new_support") else [None]
        for rule_ in rules:
            if rule_ is not None:  # the same rule strict and pooled, to compare
                limit, prior = rule_
                method.history_max_new_support = method.pooled_history_max_new_support = limit
                method.history_as_prior = method.pooled_history_as_prior = prior
            strict = mae_rmse(heavy, method.predict(variant, heavy))["mae"]
            with method.pooled(variant, heavy):
                pooled = mae_rmse(heavy, method.predict(variant, heavy))["mae"]
            rule = ("trained users" if rule_ is None else "as the prior" if prior
                    else "always" if limit is None else f"below {limit}")
            print(f"{variant} history {rule}: heavy new items strict {strict:.4f}, pooled {pooled:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config", required=True, help="the base run.toml")
    parser.add_argument("--seed", type=int, default=0, help="split and initialisation")
    parser.add_argument("--variant", action="append", default=[], help='overrides, e.g. "meta.outer_lr=0.001" ("" = base)')
    parser.add_argument("--mf", action="store_true", help="also matrix factorisation's validation MAE (the bar)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--protocol", default="melu", help="melu, time or splits (as metarec benchmark)")
    parser.add_argument("--split-dir", default=None, help="with --protocol splits: the folder of split files")
    parser.add_argument("--known-new-items", action="store_true",
                        help="also the validation proxy of known users rating new items (see known_users_on_new_items)")
    parser.add_argument("--heavy-new-items", action="store_true",
                        help="also heavy meta-train users' unused new-item ratings (see heavy_users_on_new_items)")
    parser.add_argument("--no-history", action="store_true",
                        help="with --heavy-new-items: also score those tasks without the users' history")
    parser.add_argument("--history-limits", default="",
                        help="with --heavy-new-items and --known-new-items: comma-separated K; for each, both "
                             "scored with the history only where a task has fewer than K new-item support "
                             "ratings (metarec benchmark --history-max-new-support K)")
    parser.add_argument("--pooled", default="",
                        help="with --heavy-new-items: comma-separated benchmark methods (e.g. maml,global-neural,mf), "
                             "each fitted as `metarec benchmark` fits it and scored on the heavy users' tasks strict "
                             "and pooled (--item-fold-in), with the history always and for each --history-limits K")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = RunConfig.from_toml(args.config)
    bench = BenchmarkConfig(dataset=args.dataset, run=base, protocol=args.protocol, split_dir=args.split_dir)
    split = make_split(load_dataset(args.dataset), bench.split_config(args.seed))
    known = known_users_on_new_items(split) if args.known_new_items else None
    heavy = heavy_users_on_new_items(split, args.seed) if args.heavy_new_items else None
    heavy_history = heavy.with_history(split.meta_train) if heavy is not None else None
    if heavy is not None:
        print(f"heavy users' new-item tasks: {len(heavy)}, median support {int(np.median(heavy.support_sizes))}, "
              f"with the history {int(np.median(heavy_history.support_sizes))}", flush=True)
    if args.mf:
        mf = make_method("mf", bench, args.seed)
        mf.fit(split)
        scores = {k: round(mae_rmse(v, mf.predict("mf", v))["mae"], 4) for k, v in split.validation.items()}
        if known is not None:
            scores["known_new_items"] = round(mae_rmse(known, mf.predict("mf", known))["mae"], 4)
        if heavy is not None:
            scores["heavy_new_items"] = round(mae_rmse(heavy, mf.predict("mf", heavy))["mae"], 4)
        print("mf", scores, flush=True)
    if heavy is not None and args.pooled:
        pooled_history_sweep(split, bench, heavy, [m.strip() for m in args.pooled.split(",") if m.strip()],
                             [int(k) for k in args.history_limits.split(",") if k.strip()])
        return
    for variant in args.variant or [""]:
        config = apply(base.override("train", seed=args.seed), variant)
        start = time.perf_counter()
        trainer = Trainer(config, split=split)
        result = trainer.fit()
        learner = trainer.restore_best()
        scores = validation_mae(learner, split)
        if known is not None:
            scores["val_known_new_items_mae"] = learner.evaluate(known, batch_size=64)["mae"]
        if heavy is not None:
            scores["heavy_new_items_mae"] = learner.evaluate(heavy_history, batch_size=16)["mae"]
            if args.no_history:
                scores["heavy_new_items_no_history_mae"] = learner.evaluate(heavy, batch_size=16)["mae"]
            known_items = split.known_items()
            for name, raw, history in (("heavy", heavy, split.meta_train),
                                       ("known", split.validation.get("new_users_new_items"), split.validation.get("new_users"))):
                if raw is not None and history is not None and len(raw):  # history as the prior (the default rule)
                    tasks = add_user_history(raw, history, known_items, None, as_prior=True)
                    scores[f"{name}_new_items_history_prior_mae"] = learner.evaluate(tasks, batch_size=16)["mae"]
            for limit in (int(k) for k in args.history_limits.split(",") if k.strip()):
                if known is None:
                    break
                for name, raw, history in (("heavy", heavy, split.meta_train),
                                           ("known", split.validation["new_users_new_items"], split.validation["new_users"])):
                    tasks = add_user_history(raw, history, known_items, limit, as_prior=False)
                    scores[f"{name}_new_items_history_below_{limit}_mae"] = learner.evaluate(tasks, batch_size=16)["mae"]
        print(variant or "(base)", {k: round(v, 4) for k, v in scores.items() if k.endswith("_mae")},
              f"best epoch {result.best_epoch}, {trainer.state['epoch']} epochs, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
