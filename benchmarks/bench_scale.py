"""Scale on one machine: synthetic ratings through generation, Parquet, split, task packing and meta-training.

For each size in ``--ratings`` (default 1M, 10M, 50M ratings; larger by flag) the synthetic generator
draws ``size / 50`` users (ratings per user heavy tailed on 15..1000, mean 50) and a tenth as many items
(50M: 1M users x 100k items), and two fresh subprocesses run the stages, each timed:

1. ``generate``: :func:`metarec.data.synthetic.stream.write_synthetic` - users and items in numpy, the
   ratings drawn block by block of users and appended to ``ratings.parquet`` one row group at a time;
2. ``read``: :func:`metarec.data.columnar.load_columnar` - the Parquet file read in 1M-row batches into
   int64 / float32 columns (ids stay Arrow dictionaries until mapped; no Python object per rating);
3. ``split``: ``make_split`` (melu protocol, heavy users' ratings chunked into meta-train tasks);
4. ``pack``: the meta-train tasks' CSR arrays padded into one TaskBatch (``TaskSet.packed``);
5. ``encode``: the attribute encoders, a small feature-MLP (embedding 16, fc 32-1) and its MetaLearner;
6. ``train``: ``--batches`` meta-batches of 32 tasks through ``MetaLearner.meta_step`` (MAML, one
   inner step, only the head adapts), after 5 warm-up steps; tasks/s over the timed ones.

Peak RSS is each subprocess's ``VmHWM`` (read in the child from /proc/self/status), the larger of the
two: stages 2-6 share one process, so the pipeline's peak holds the dataset, the split and the packed
tasks at once, as a real run does. "Linear" is judged on the data stages (1-4, and 5, which encodes
users and items): their CPU seconds per rating (``time.process_time``: on a shared machine wall time
also counts the waits for a core; both are printed), and peak RSS per rating, relative to the first
size, must not grow (ratio <= 1, up to noise) as the size grows; 50M ratings must fit in 24 GB.
Training is a bounded number of meta-batches whatever the size, so it is judged on tasks/s staying
flat. The Parquet files go to a temporary folder under ``--workdir``, removed at the end.

    METAREC_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py \\
        [--ratings 1e6,10e6,50e6] [--batches 200] [--threads 1] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATINGS_PER_USER = (15, 1000)
RATINGS_PER_USER_EXPONENT = 2.2  # P(n) ~ n^-2.2 on 15..1000: mean 50, a tenth of users over 100
USERS_PER_ITEM = 10
META_BATCH = 32
WARMUP_STEPS = 5
MARK = "BENCH_SCALE_RESULT "
DATA_STAGES = ("generate", "read", "split", "pack", "encode")


def synthetic_config(target: float, seed: int):
    """Users for ``target`` ratings at the mean of the per-user distribution; a tenth as many items."""
    from metarec.data.synthetic import SyntheticConfig

    lo, hi = RATINGS_PER_USER
    n_users = max(100, int(round(target / _mean_ratings(lo, hi))))
    n_items = max(100, n_users // USERS_PER_ITEM)
    hi = min(hi, n_items)  # tiny sizes: nobody rates more than the catalogue
    return SyntheticConfig(n_users=n_users, n_items=n_items, ratings_per_user=(lo, hi),
                           ratings_per_user_exponent=RATINGS_PER_USER_EXPONENT, seed=seed)


def _mean_ratings(lo: int, hi: int) -> float:
    import numpy as np

    n = np.arange(lo, hi + 1, dtype=np.float64)
    p = n ** -RATINGS_PER_USER_EXPONENT
    return float((p * n).sum() / p.sum())


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


# ---------------------------------------------------------------------------------------------- children
def child_generate(target: float, folder: Path, seed: int) -> dict:
    import pyarrow.parquet as pq

    from metarec.data.synthetic.stream import write_synthetic

    config = synthetic_config(target, seed)
    start, cpu = time.perf_counter(), time.process_time()
    write_synthetic(config, folder)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"ratings": pq.ParquetFile(folder / "ratings.parquet").metadata.num_rows, "users": config.n_users,
            "items": config.n_items, "generate_s": seconds, "generate_cpu": cpu, "generate_peak_gb": peak_rss_gb(),
            "file_mb": (folder / "ratings.parquet").stat().st_size / 1e6}


def child_pipeline(folder: Path, batches: int, threads: int, seed: int) -> dict:
    import itertools

    import numpy as np
    import torch

    from metarec.data.columnar import load_columnar
    from metarec.meta.config import MetaConfig
    from metarec.meta.learner import MetaLearner
    from metarec.models.config import ModelConfig, build_model
    from metarec.tasks import make_split
    from metarec.tasks.config import SplitConfig
    from metarec.tasks.features import encode_features

    torch.set_num_threads(threads)
    out: dict = {}
    clock, cpu = time.perf_counter(), time.process_time()

    def done(stage: str) -> None:
        nonlocal clock, cpu
        now, now_cpu = time.perf_counter(), time.process_time()
        out[f"{stage}_s"], out[f"{stage}_cpu"], out[f"{stage}_peak_gb"] = now - clock, now_cpu - cpu, peak_rss_gb()
        clock, cpu = now, now_cpu

    dataset = load_columnar(folder)
    done("read")
    split = make_split(dataset, SplitConfig(heavy_users="chunk", seed=seed))
    done("split")
    tasks = split.meta_train
    tasks.packed()
    done("pack")
    features = encode_features(split)
    model = build_model(ModelConfig(kind="feature-mlp", embedding_size=16, hidden=(32,)), features.user_encoder,
                        features.item_encoder, features.item_features, known_items=features.known_items,
                        rating_scale=dataset.rating_scale, seed=seed)
    learner = MetaLearner(model, MetaConfig(algorithm="maml", inner_steps=1, meta_batch_size=META_BATCH),
                          features.user_features)
    done("encode")
    stream = tasks.batches(META_BATCH, shuffle=True, generator=np.random.default_rng(seed))
    generator = torch.Generator().manual_seed(seed)
    for batch in itertools.islice(stream, WARMUP_STEPS):  # the optimiser is built on the first step
        learner.meta_step(batch, generator=generator)
    clock, cpu = time.perf_counter(), time.process_time()
    n_tasks = 0
    for batch in itertools.islice(stream, batches):
        learner.meta_step(batch, generator=generator)
        n_tasks += len(batch)
    done("train")
    out.update(tasks_per_s=n_tasks / out["train_s"], meta_train_tasks=len(tasks), timed_tasks=n_tasks,
               n_ratings=dataset.n_ratings, split_ratings=int(tasks.support_sizes.sum() + tasks.query_sizes.sum()))
    return out


def run_child(args: list[str]) -> dict:
    """One stage group in a fresh interpreter; its result is the line after MARK on its stdout."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"bench_scale: child {' '.join(args)} failed (exit {proc.returncode})")


# ---------------------------------------------------------------------------------------------- report
def print_report(rows: list[dict], args: argparse.Namespace) -> None:
    import torch

    print(f"# bench_scale: synthetic ratings (15..1000 per user, mean 50; {USERS_PER_ITEM} users per item), "
          f"melu split with heavy users chunked, feature-MLP 16 / 32-1, MAML K=1, meta-batch {META_BATCH}, "
          f"{args.batches} timed meta-batches; torch {torch.__version__}, threads {args.threads}, "
          f"cpus {os.cpu_count()}, {platform.machine()}")
    print("\n| ratings | users | items | generate s | read s | split s | pack s | encode s | train s "
          "| data stages CPU s | peak RSS GB (gen / pipeline) | meta-train tasks | tasks/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratings']:,} | {r['users']:,} | {r['items']:,} | {r['generate_s']:.1f} | {r['read_s']:.1f} "
              f"| {r['split_s']:.1f} | {r['pack_s']:.1f} | {r['encode_s']:.1f} | {r['train_s']:.1f} "
              f"| {total(r, 'cpu'):.1f} | {r['generate_peak_gb']:.2f} / {r['train_peak_gb']:.2f} "
              f"| {r['meta_train_tasks']:,} | {r['tasks_per_s']:.0f} |")
    base = rows[0]

    def ratio(r: dict, value) -> float:  # per rating, relative to the first size
        return (value(r) / r["ratings"]) / (value(base) / base["ratings"])

    print(f"\nCost per rating relative to {base['ratings']:,} ratings (<= 1: at most linear; stages in CPU "
          "seconds), tasks/s relative:")
    print("\n| ratings | " + " | ".join(f"{s} CPU" for s in DATA_STAGES)
          + " | data stages CPU | data stages wall | peak RSS | tasks/s |")
    print("|---|" + "---|" * (len(DATA_STAGES) + 4))
    for r in rows:
        stages = [ratio(r, lambda x, s=s: x[f"{s}_cpu"]) for s in DATA_STAGES]
        print(f"| {r['ratings']:,} | " + " | ".join(f"{x:.2f}" for x in stages)
              + f" | {ratio(r, lambda x: total(x, 'cpu')):.2f} | {ratio(r, lambda x: total(x, 's')):.2f} "
              f"| {ratio(r, lambda x: x['peak_gb']):.2f} | {r['tasks_per_s'] / base['tasks_per_s']:.2f} |")
    largest = rows[-1]
    print(f"\nlargest: {largest['ratings']:,} ratings, peak RSS {largest['peak_gb']:.2f} GB "
          f"({'fits' if largest['peak_gb'] < 24 else 'does not fit'} in 24 GB); "
          f"data stages {total(largest, 's'):.0f} s wall, {total(largest, 'cpu'):.0f} s CPU")


def total(row: dict, unit: str) -> float:
    """The data stages' wall (``s``) or CPU (``cpu``) seconds."""
    return sum(row[f"{s}_{unit}"] for s in DATA_STAGES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", default="1e6,10e6,50e6", help="comma-separated sizes (ratings)")
    parser.add_argument("--batches", type=int, default=200, help="timed meta-batches per size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the pipeline process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the temporary Parquet folder goes (default: TMPDIR)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: one stage group
    args = parser.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        if kind == "generate":
            result = child_generate(float(rest[0]), Path(rest[1]), args.seed)
        else:
            result = child_pipeline(Path(rest[0]), args.batches, args.threads, args.seed)
        print(MARK + json.dumps(result), flush=True)
        return 0

    sizes = [float(x) for x in args.ratings.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench_scale.", dir=args.workdir))
    rows = []
    try:
        for size in sizes:
            folder = work / f"synthetic-{int(size)}"
            common = ["--seed", str(args.seed), "--batches", str(args.batches), "--threads", str(args.threads)]
            row = run_child([*common, "--child", "generate", repr(size), str(folder)])
            row.update(run_child([*common, "--child", "pipeline", str(folder)]))
            row["peak_gb"] = max(row["generate_peak_gb"], row["train_peak_gb"])
            rows.append(row)
            shutil.rmtree(folder, ignore_errors=True)
            print(f"# {row['ratings']:,} ratings done: peak {row['peak_gb']:.2f} GB, "
                  f"data stages {total(row, 's'):.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
