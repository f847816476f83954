"""Meta-training throughput on implicit feedback beside the explicit one (issue 20), on ML-1M.

Both sides use the same split (``ImplicitBenchmarkConfig().split_config(0)``: the explicit recipe's
split, MeLU protocol, heavy users' ratings as chunks, seed 0) of ``load_dataset("ml-1m")`` (ratings) and
``load_dataset("ml-1m", feedback="implicit")`` (every rating a positive, confidence 1), their own
features (``encode_features``) and each its own recipe:

* explicit: ``recipe_base()`` (the automatic recipe's base before its search): NeuralCF with the
  closed-form ridge fold-in over the support, ``inner_steps=0``, absolute-error query loss,
  meta-batch 32; each epoch's tasks get a fresh support / query partition and half of them a short
  support (1-20 ratings), as ``Trainer`` does;
* implicit: ``RECIPE_MODEL`` / ``RECIPE_META`` / ``RECIPE_TRAIN`` of ``metarec.eval.implicit.meta_method``:
  NeuralCF with the iALS fold-in against the whole catalogue, ``inner_steps=0``, sampled-softmax query
  loss over 8 negatives per query positive, meta-batch 64; each epoch's tasks from ``epoch_tasks``
  (the same resampling and short supports, then ``with_negatives``, uniform over the training items).

For each it times ``MetaLearner.meta_step`` over ``--batches`` full meta-batches of shuffled, bucketed
training epochs (after ``--warmup`` others), alternately - explicit block, implicit block, ``--repeat``
times - so the machine's noise hits both alike, and prints the median tasks/s and meta-batches/s
(min-max over the repeats) and the ratio implicit / explicit. Separately (also once per repeat) it times
what an epoch costs before the meta-steps: the support / query resampling and short supports (both
sides), the negative sampling (``with_negatives``; implicit only) and packing the epoch into meta-batches
(``TaskSet.batches``), each in us per task, and the negative sampling as a share of a whole implicit
epoch (its data preparation plus its meta-steps at the measured rate; validation not counted).

The gradient-step variant of each (``inner_steps=1`` after the fold-in; implicit: inner loss ``bce`` on
support negatives, ``support_negatives=1.0``) is timed the same way only with ``--steps``: it is off by
default because at the defaults it adds about 1.5 minutes on one thread of the 2-core reference machine
(a step costs 2-3x a fold-in meta-step on both sides, and support negatives make sampling dearer), more
than the minute this benchmark allows for it; ``--steps --batches 50`` keeps it near a minute.

    METAREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_implicit.py [--threads 1] [--batches 200] [--repeat 3] [--steps]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, replace

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_meta import data_dir  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Side:
    """One feedback mode: its split, features, recipe configs and how it draws one epoch's tasks."""

    name: str
    split: object
    features: object
    model_config: object
    meta_config: object
    epoch_tasks: object  # (epoch) -> TaskSet
    prepare: object  # (epoch) -> {stage: seconds} for one epoch's data preparation (TaskSet.batches included)


def explicit_side(split, features, step: bool) -> Side:
    from metarec.meta.recipe import recipe_base

    base = recipe_base()
    train = base.train
    meta = replace(base.meta, inner_steps=1) if step else base.meta

    def resample(epoch: int):
        tasks = split.meta_train
        if train.resample_query:
            tasks = tasks.with_resampled_query(np.random.default_rng([0, epoch, 1]))
        if train.short_support_fraction > 0:
            tasks = tasks.with_short_supports(np.random.default_rng([0, epoch, 2]), train.short_support_fraction,
                                              train.short_support_max)
        return tasks

    def prepare(epoch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        tasks = resample(epoch)
        t1 = time.perf_counter()
        _ = list(tasks.batches(meta.meta_batch_size, shuffle=True, generator=np.random.default_rng([0, epoch])))
        return {"resample": t1 - t0, "negatives": 0.0, "batching": time.perf_counter() - t1}

    return Side("explicit", split, features, base.model, meta, resample, prepare)


def implicit_side(split, features, step: bool) -> Side:
    from metarec.eval.implicit.meta_method import RECIPE_META, RECIPE_MODEL, RECIPE_TRAIN
    from metarec.meta.implicit import epoch_tasks
    from metarec.tasks.negatives import with_negatives

    meta = replace(RECIPE_META, inner_steps=1, inner_loss="bce") if step else RECIPE_META
    train = replace(RECIPE_TRAIN, support_negatives=1.0) if step else RECIPE_TRAIN
    n_items = split.dataset.n_items
    known = np.asarray(split.known_items(), dtype=bool)

    def tasks_of(epoch: int):
        return epoch_tasks(split.meta_train, n_items, train, epoch, candidates=known, popularity=None)

    def prepare(epoch: int) -> dict[str, float]:
        # epoch_tasks' own steps, one by one (uniform sampling: no popularity weights)
        seed = train.seed
        t0 = time.perf_counter()
        tasks = split.meta_train
        if train.resample_query:
            tasks = tasks.with_resampled_query(np.random.default_rng([seed, epoch, 1]))
        if train.short_support_fraction > 0:
            tasks = tasks.with_short_supports(np.random.default_rng([seed, epoch, 2]), train.short_support_fraction,
                                              train.short_support_max)
        t1 = time.perf_counter()
        tasks = with_negatives(tasks, n_items, np.random.default_rng([seed, epoch, 3]),
                               query_ratio=train.query_negatives, support_ratio=train.support_negatives,
                               candidates=known)
        t2 = time.perf_counter()
        _ = list(tasks.batches(meta.meta_batch_size, shuffle=True, generator=np.random.default_rng([seed, epoch])))
        return {"resample": t1 - t0, "negatives": t2 - t1, "batching": time.perf_counter() - t2}

    return Side("implicit", split, features, RECIPE_MODEL, meta, tasks_of, prepare)


def learner_of(side: Side, seed: int = 0):
    from metarec.meta.learner import MetaLearner
    from metarec.models import build_model

    f = side.features
    model = build_model(side.model_config, f.user_encoder, f.item_encoder, f.item_features, known_items=f.known_items,
                        rating_scale=side.split.dataset.rating_scale, seed=seed)
    return MetaLearner(model, side.meta_config, f.user_features)


def meta_batches(side: Side, n: int) -> list:
    """``n`` full meta-batches of consecutive shuffled, bucketed training epochs (0, 1, ...)."""
    size = side.meta_config.meta_batch_size
    out, epoch = [], 0
    while len(out) < n:
        tasks = side.epoch_tasks(epoch)
        out += [b for b in tasks.batches(size, shuffle=True, generator=np.random.default_rng([0, epoch]))
                if len(b) == size]
        epoch += 1
    return out[:n]


def time_steps(learner, batches, generator) -> float:
    start = time.perf_counter()
    for b in batches:
        learner.meta_step(b, generator=generator)
    return time.perf_counter() - start


def fmt(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def run_variant(label: str, sides: list[Side], args) -> dict:
    """Warm up, then ``args.repeat`` x (explicit block, implicit block), each block also timing one epoch's
    data preparation; returns the per-side rates and preparation times."""
    state = {}
    for side in sides:
        torch.manual_seed(0)
        learner = learner_of(side)
        batches = meta_batches(side, args.warmup + args.batches)
        gen = torch.Generator().manual_seed(0)
        time_steps(learner, batches[:args.warmup], gen)
        timed = batches[args.warmup:]
        n_tasks = sum(len(b) for b in timed)
        mean_s = float(sum(float(b.support_mask.sum()) for b in timed)) / n_tasks
        mean_q = float(sum(float(b.query_mask.sum()) for b in timed)) / n_tasks
        state[side.name] = dict(side=side, learner=learner, batches=timed, gen=gen, n_tasks=n_tasks,
                                support=mean_s, query=mean_q, tasks_s=[], batches_s=[], prep=[])
    for r in range(args.repeat):
        for side in sides:
            s = state[side.name]
            seconds = time_steps(s["learner"], s["batches"], s["gen"])
            s["tasks_s"].append(s["n_tasks"] / seconds)
            s["batches_s"].append(len(s["batches"]) / seconds)
            s["prep"].append(side.prepare(100 + r))  # epochs the timed batches did not come from
        e, i = state["explicit"], state["implicit"]
        print(f"{label} repeat {r + 1}: explicit {e['tasks_s'][-1]:.0f} tasks/s, implicit {i['tasks_s'][-1]:.0f} "
              f"tasks/s, ratio {i['tasks_s'][-1] / e['tasks_s'][-1]:.2f}", flush=True)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--batches", type=int, default=200, help="timed meta-batches per block (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="meta-batches before timing (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="explicit / implicit block pairs (default 3)")
    parser.add_argument("--steps", action="store_true", help="also time the gradient-step (inner_steps=1) variant")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from metarec.data.loaders.registry import load_dataset
    from metarec.eval.implicit.config import ImplicitBenchmarkConfig
    from metarec.tasks import make_split
    from metarec.tasks.features import encode_features

    t_setup = time.perf_counter()
    split_config = ImplicitBenchmarkConfig().split_config(0)
    splits = {"explicit": make_split(load_dataset("ml-1m", data_dir=data_dir()), split_config),
              "implicit": make_split(load_dataset("ml-1m", data_dir=data_dir(), feedback="implicit"), split_config)}
    feats = {k: encode_features(s) for k, s in splits.items()}
    setup_s = time.perf_counter() - t_setup

    variants = [("fold-in (recipe, inner_steps=0)", False)]
    if args.steps:
        variants.append(("gradient step (inner_steps=1)", True))
    results = []
    for label, step in variants:
        sides = [explicit_side(splits["explicit"], feats["explicit"], step),
                 implicit_side(splits["implicit"], feats["implicit"], step)]
        results.append((label, step, run_variant(label, sides, args)))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    train = splits["explicit"].meta_train
    print(f"\n# bench_implicit: ml-1m explicit vs implicit, split ImplicitBenchmarkConfig().split_config(0) "
          f"({len(train)} meta-train tasks, {splits['implicit'].dataset.n_items} items; {setup_s:.1f}s setup)")
    print(f"# torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, {cpu_model()}")
    print(f"# timed: {args.batches} meta-batches per block after {args.warmup} warm-up, {args.repeat} repeats, "
          "blocks alternated; median (min-max) over the repeats")
    print("\n| variant | side | meta-batch | support / query rows per task | tasks/s | meta-batches/s | "
          "implicit / explicit (tasks/s): of the medians (each repeat's) |")
    print("|---|---|---|---|---|---|---|")
    for label, _, state in results:
        ratio = statistics.median(state["implicit"]["tasks_s"]) / statistics.median(state["explicit"]["tasks_s"])
        per_repeat = [i / e for i, e in zip(state["implicit"]["tasks_s"], state["explicit"]["tasks_s"])]
        ratio_text = f"{ratio:.2f}x (per repeat {min(per_repeat):.2f}-{max(per_repeat):.2f})"
        for name in ("explicit", "implicit"):
            s = state[name]
            cfg = s["side"].meta_config
            extra = "" if cfg.inner_steps == 0 else f", inner {cfg.inner_loss}"
            print(f"| {label} | {name} ({cfg.query_loss}{extra}) | {cfg.meta_batch_size} | {s['support']:.1f} / "
                  f"{s['query']:.1f} | {fmt(s['tasks_s'])} | {fmt(s['batches_s'], 1)} | "
                  f"{ratio_text if name == 'implicit' else ''} |")

    print("\n| variant | side | resample + short supports, us/task | negative sampling, us/task | "
          "batching, us/task | meta-steps, us/task | epoch (s) | negative sampling, % of epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for label, _, state in results:
        for name in ("explicit", "implicit"):
            s = state[name]
            n = len(s["side"].split.meta_train)
            prep = {k: statistics.median(p[k] for p in s["prep"]) for k in ("resample", "negatives", "batching")}
            step_s = n / statistics.median(s["tasks_s"])
            epoch_s = sum(prep.values()) + step_s
            neg = f"{1e6 * prep['negatives'] / n:.1f}" if name == "implicit" else "-"
            share = f"{100 * prep['negatives'] / epoch_s:.1f}%" if name == "implicit" else "-"
            print(f"| {label} | {name} | {1e6 * prep['resample'] / n:.1f} | {neg} | {1e6 * prep['batching'] / n:.1f} | "
                  f"{1e6 * step_s / n:.0f} | {epoch_s:.2f} | {share} |")
    print(f"\npeak RSS: {peak_mb:.0f} MB; wall {time.perf_counter() - T0:.0f} s; threads={torch.get_num_threads()}; "
          "epoch = data preparation + meta-steps at the median rate (no validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
