"""Meta-training throughput with MeLU's shapes: the vectorised engine against the per-task loop.

MeLU's setting on ML-1M (``ml-1m-imdb``): item attributes rate, imdb_genres, directors, actors; user
attributes gender, age, occupation, zip_prefix; embedding 32, fc 64-64-1, only the fc head adapts;
MeLU split protocol (seed 0), meta-batch 32. For K = 1 and 5 inner steps, second order (maml) and
first order (fomaml), it times

* the engine: ``MetaLearner.meta_step`` (meta-gradient, clipping, Adam);
* the loop: ``reference_meta_gradients`` (one task after another) + the same clipping and Adam step;

on the same meta-batches (bucketed by support length as in training), alternately within one run, and
prints tasks/s (median, min-max over the repeats), the ratio engine / loop, and the achieved GFLOP/s
against a ``torch.mm`` ceiling measured in the same run. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmul-family ops only: mm, addmm, bmm, baddbmm, ...):
the loop's count is the naive arithmetic of the maths (one unpadded task at a time, explicit per-task
weights), the engine's what it executes (padding included, low-rank inner updates).

    METAREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_meta.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

MELU_ITEM_COLUMNS = ("rate", "imdb_genres", "directors", "actors")
MELU_USER_COLUMNS = ("gender", "age", "occupation", "zip_prefix")


def data_dir() -> str | None:
    """$METAREC_DATA_DIR, else the checkout's sibling ``shared/data`` folder when there is one."""
    if os.environ.get("METAREC_DATA_DIR"):
        return os.environ["METAREC_DATA_DIR"]
    sibling = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
    return sibling if os.path.isdir(sibling) else None


def melu_dataset(name: str = "ml-1m-imdb"):
    """ML-1M with MeLU's attributes only (every other item column marked 'text': never fed to the model)."""
    from metarec.data.loaders.registry import load_dataset
    from metarec.data.schema import AttributeSpec

    ds = load_dataset(name, data_dir=data_dir())
    item_schema = {c: (s if c in MELU_ITEM_COLUMNS else AttributeSpec("text")) for c, s in ds.item_schema.items()}
    user_schema = {c: (s if c in MELU_USER_COLUMNS else AttributeSpec("text")) for c, s in ds.user_schema.items()}
    return dataclasses.replace(ds, item_schema=item_schema, user_schema=user_schema)


def melu_split(dataset=None, seed: int = 0):
    from metarec.tasks import SplitConfig, make_split

    return make_split(dataset if dataset is not None else melu_dataset(), SplitConfig(seed=seed))


def melu_learner(split, features=None, *, algorithm: str = "maml", inner_steps: int = 1, seed: int = 0, **meta):
    from metarec.meta.config import MetaConfig
    from metarec.meta.learner import MetaLearner
    from metarec.models import ModelConfig, build_model
    from metarec.tasks.features import encode_features

    feats = features if features is not None else encode_features(split)
    model = build_model(ModelConfig.melu(), feats.user_encoder, feats.item_encoder, feats.item_features,
                        known_items=feats.known_items, rating_scale=split.dataset.rating_scale, seed=seed)
    config = dataclasses.replace(MetaConfig.melu(), algorithm=algorithm, inner_steps=inner_steps, **meta)
    return MetaLearner(model, config, feats.user_features)


# ---------------------------------------------------------------------- steps
def engine_step(learner, batch) -> float:
    return learner.meta_step(batch)


def loop_step(learner, batch) -> float:
    """The per-task reference meta-gradient followed by exactly the optimiser update meta_step makes."""
    from metarec.meta.reference import reference_meta_gradients

    learner.model.train()
    grads, loss = reference_meta_gradients(learner, batch)
    named = learner.named_meta_parameters()
    for n, p in named.items():
        p.grad = grads[n]
    if learner.config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(list(named.values()), learner.config.grad_clip)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    return loss


def time_batches(step, learner, batches) -> float:
    """Seconds to run ``step`` over every batch once."""
    start = time.perf_counter()
    for b in batches:
        step(learner, b)
    return time.perf_counter() - start


def count_flops(step, learner, batches) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    learner = copy.deepcopy(learner)
    with FlopCounterMode(display=False) as counter:
        for b in batches:
            step(learner, b)
    return float(counter.get_total_flops())


def mm_ceiling(threads: int, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of torch.mm: a square 1024^3 product (the machine's ceiling) and the head's own shape
    ([32 tasks x 32 items, 128] @ [128, 64], the first layer's item half)."""
    out = {}
    for label, (m, k, n) in {"mm 1024x1024x1024": (1024, 1024, 1024), "mm 1024x128x64 (head shape)": (1024, 128, 64)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        flops = 2.0 * m * k * n
        reps = max(3, int(2e9 / flops / 20))
        best = []
        for _ in range(repeats):
            torch.mm(a, b)
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            best.append(flops * reps / (time.perf_counter() - start) / 1e9)
        out[label] = statistics.median(best)
    return out


def fmt_rate(values: list[float]) -> str:
    return f"{statistics.median(values):8.0f} ({min(values):.0f}-{max(values):.0f})"


def sample_batches(tasks, batch_size: int, n: int, seed: int = 0) -> list:
    """``n`` full meta-batches of one shuffled, bucketed training epoch, at evenly spaced quantiles of
    their padded support width (so the sample's support lengths are the epoch's)."""
    epoch = [b for b in tasks.batches(batch_size, shuffle=True, generator=np.random.default_rng(seed))
             if len(b) == batch_size]
    epoch.sort(key=lambda b: b.support_mask.shape[1])
    picks = np.unique(np.linspace(0, len(epoch) - 1, min(n, len(epoch))).round().astype(int))
    return [epoch[i] for i in picks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--batches", type=int, default=12, help="meta-batches per timed run (default 12)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-loop", action="store_true", help="time the engine only")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    split = melu_split()
    from metarec.tasks.features import encode_features

    feats = encode_features(split)
    tasks = split.meta_train
    batches = sample_batches(tasks, args.batch_size, args.batches)
    n_tasks = sum(map(len, batches))
    real = float(sum(float(b.support_mask.sum()) for b in batches)) / n_tasks
    width = float(np.mean([b.support_mask.shape[1] for b in batches]))
    print(f"# bench_meta: ml-1m-imdb, MeLU features and sizes, melu split seed 0 ({time.perf_counter() - t0:.1f}s setup)")
    print(f"# torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, {platform.processor() or platform.machine()}")
    print(f"# meta-train tasks {len(tasks)}, support {tasks.support_sizes.min()}-{tasks.support_sizes.max()} "
          f"(median {np.median(tasks.support_sizes):.0f}, mean {tasks.support_sizes.mean():.1f}), query "
          f"{int(np.median(tasks.query_sizes))}; meta-batch {args.batch_size}")
    print(f"# timed: the same {len(batches)} meta-batches ({n_tasks} tasks) for engine and loop, alternately; "
          f"mean support {real:.1f}, mean padded width {width:.1f}")
    ceiling = mm_ceiling(args.threads)
    for k, v in ceiling.items():
        print(f"# ceiling {k}: {v:.1f} GFLOP/s")
    peak = max(ceiling.values())

    rows = []
    for steps in args.steps:
        for algorithm in args.algorithms:
            base = melu_learner(split, feats, algorithm=algorithm, inner_steps=steps)
            eng, loop = copy.deepcopy(base), copy.deepcopy(base)
            time_batches(engine_step, eng, batches[:3])  # warm-up
            if not args.no_loop:
                time_batches(loop_step, loop, batches[:1])
            e_rates, l_rates = [], []
            for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
                e_rates.append(n_tasks / time_batches(engine_step, eng, batches))
                if not args.no_loop:
                    l_rates.append(n_tasks / time_batches(loop_step, loop, batches))
            executed = count_flops(engine_step, base, batches) / n_tasks
            useful = count_flops(loop_step, base, batches) / n_tasks
            rows.append((steps, algorithm, e_rates, l_rates, useful, executed))
            e = statistics.median(e_rates)
            msg = f"K={steps} {algorithm:6s} engine {fmt_rate(e_rates)} tasks/s"
            if l_rates:
                msg += f" | loop {fmt_rate(l_rates)} tasks/s | ratio {e / statistics.median(l_rates):.1f}x"
            print(msg, flush=True)

    print()
    print("| K | order | engine tasks/s, median (min-max) | loop tasks/s, median (min-max) | engine / loop | "
          "MFLOP/task: loop (naive) / engine | engine GFLOP/s executed (naive-equivalent) | % of mm ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for steps, algorithm, e_rates, l_rates, useful, executed in rows:
        e = statistics.median(e_rates)
        order = "2nd (maml)" if algorithm == "maml" else "1st (fomaml)" if algorithm == "fomaml" else algorithm
        loop_txt = fmt_rate(l_rates).strip() if l_rates else "-"
        ratio = f"{e / statistics.median(l_rates):.1f}x" if l_rates else "-"
        g_exec, g_naive = executed * e / 1e9, useful * e / 1e9
        print(f"| {steps} | {order} | {fmt_rate(e_rates).strip()} | {loop_txt} | {ratio} | {useful / 1e6:.2f} / "
              f"{executed / 1e6:.2f} | {g_exec:.1f} ({g_naive:.1f}) | {100 * g_exec / peak:.0f}% ({100 * g_naive / peak:.0f}%) |")
    print(f"\nthreads={torch.get_num_threads()}; mm ceiling {peak:.1f} GFLOP/s; repeats={args.repeats}; FLOPs counted "
          "with torch.utils.flop_counter.FlopCounterMode (matmul-family ops) over the timed batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
