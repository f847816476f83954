"""What an ensemble costs a served request: one new user adapted and the catalogue's top-10 returned, by one
meta-learner and by the ensemble it is the first member of, timed alternately on the same users.

The run folder must hold an ensemble (``metarec train ... --members M``); its first member (``RUN/best``)
is served alone as the single model. Users: the run's test users (``new_users``), their support cut to
``--support`` ratings (a newcomer's first ratings), through :meth:`ColdStartRecommender.recommend` (checks,
adaptation, the whole catalogue scored and ranked). Prints p50 / p99 per model and their ratio.

    METAREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_ensemble_serving.py RUN [--support 1]
        [--users 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from metarec.meta.ensemble import member_checkpoint_dirs
from metarec.serve.bundle import read_run
from metarec.serve.recommender import ColdStartRecommender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder trained with --members M (M >= 2)")
    parser.add_argument("--support", type=int, default=1, help="ratings per new user (default 1)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    members = member_checkpoint_dirs(args.run)
    if not members:
        raise SystemExit(f"{args.run}: no ensemble members (train with --members 3)")
    split, _ = read_run(args.run)
    tasks = split.test["new_users"]
    ids = split.dataset.item_vocab.ids
    rng = np.random.default_rng(0)
    users = []
    for t in rng.permutation(len(tasks))[: args.users]:
        lo, hi = tasks.support_ptr[t], tasks.support_ptr[t + 1]
        pick = rng.choice(np.arange(lo, hi), min(args.support, hi - lo), replace=False)
        users.append({ids[int(tasks.support_item[j])]: float(tasks.support_rating[j]) for j in pick})
    served = {"single": ColdStartRecommender.load(args.run / "best", replicas=1),
              f"ensemble of {len(members) + 1}": ColdStartRecommender.load(args.run, replicas=1)}
    for rec in served.values():  # warm-up: first calls build caches
        for ratings in users[:10]:
            rec.recommend(ratings, k=10)
    times: dict[str, list[float]] = {name: [] for name in served}
    for ratings in users:
        for name, rec in served.items():
            start = time.perf_counter()
            rec.recommend(ratings, k=10)
            times[name].append((time.perf_counter() - start) * 1e3)
    print(f"{args.run}: {len(ids)} items, {len(users)} new users with {args.support} rating(s), "
          f"{args.threads} thread(s); recommend(k=10) latency, ms")
    for name, values in times.items():
        q = statistics.quantiles(values, n=100)
        print(f"  {name:>14}: p50 {statistics.median(values):.2f}  p99 {q[98]:.2f}  mean {statistics.fmean(values):.2f}")
    single, ensemble = (statistics.median(v) for v in times.values())
    print(f"  ensemble / single, p50: {ensemble / single:.2f}x")


if __name__ == "__main__":
    main()
