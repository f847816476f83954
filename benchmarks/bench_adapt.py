"""Serving a new user with MeLU's shapes on ML-1M: adapt to their ratings, score the whole catalogue.

* latency: one new user at a time through :class:`metarec.serve.personalizer.Personalizer` -
  ``adapt(ratings, attributes)`` (K inner steps) then ``recommend(k=10)``, which scores every item of the
  catalogue (3,883 films, the 3,706 rated ones among them) and ranks them; p50 / p99 / mean over the
  test users of the MeLU split (``new_users``: real support sets, 3-90 ratings);
* throughput: many new users adapted together - ``MetaLearner.adapt`` on one ``TaskBatch`` of them, then
  ``MetaLearner.predict_items`` against the whole catalogue ([B, 3883] scores) - users/s.

The checkpoint is a freshly initialised MeLU model (``--train-epochs N`` meta-trains it for N epochs
first; serving cost does not depend on the weights' values).

    METAREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_adapt.py [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_meta import MELU_USER_COLUMNS, melu_split  # noqa: E402


def melu_checkpoint(split, train_epochs: int = 0, seed: int = 0):
    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import Trainer

    config = RunConfig.preset("melu").override("data", dataset="ml-1m-imdb").override("train", epochs=train_epochs, seed=seed)
    trainer = Trainer(config, split=split)
    if train_epochs:
        trainer.fit()
    return trainer.checkpoint()


def new_users(split, scenario: str = "new_users"):
    """(ratings {item_id: rating}, attributes {column: value}) of every test user of ``scenario``."""
    tasks = split.test[scenario]
    ds = split.dataset
    out = []
    for t in range(len(tasks)):
        items, ratings = tasks.support_of(t)
        row = ds.users.iloc[int(tasks.user_idx[t])]
        attrs = {c: (None if row[c] is None or (isinstance(row[c], float) and np.isnan(row[c])) else row[c])
                 for c in MELU_USER_COLUMNS if c in ds.users.columns}
        out.append(({ds.item_vocab.ids[int(i)]: float(r) for i, r in zip(items, ratings)}, attrs))
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--users", type=int, default=500, help="users timed one at a time (default 500)")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256], help="users adapted together")
    parser.add_argument("--train-epochs", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from metarec.serve.personalizer import Personalizer

    split = melu_split()
    ckpt = melu_checkpoint(split, args.train_epochs)
    personalizer = Personalizer(ckpt)
    learner = personalizer.learner
    users = new_users(split)
    n_items = len(personalizer.item_vocab)
    rated = int(split.dataset.ratings["item_idx"].nunique())
    sizes = [len(r) for r, _ in users]
    print(f"# bench_adapt: ml-1m-imdb, MeLU features and sizes, {'freshly initialised' if not args.train_epochs else f'{args.train_epochs}-epoch'} checkpoint")
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, {platform.machine()}")
    print(f"# catalogue {n_items} items ({rated} rated); {len(users)} new users, support {min(sizes)}-{max(sizes)} "
          f"(median {int(np.median(sizes))}); meta-learning kernel: {learner.kernel}")

    print("\n| K | users | p50 ms | p90 ms | p99 ms | mean ms | adapt p50 ms | recommend p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        for ratings, attrs in users[:20]:  # warm-up
            personalizer.adapt(ratings, attrs, steps=steps).recommend(10)
        total, t_adapt, t_rec = [], [], []
        chosen = [users[i % len(users)] for i in range(args.users)]
        for ratings, attrs in chosen:
            t0 = time.perf_counter()
            user = personalizer.adapt(ratings, attrs, steps=steps)
            t1 = time.perf_counter()
            recs = user.recommend(10)
            t2 = time.perf_counter()
            assert len(recs) == 10
            total.append((t2 - t0) * 1e3)
            t_adapt.append((t1 - t0) * 1e3)
            t_rec.append((t2 - t1) * 1e3)
        print(f"| {steps} | {len(chosen)} | {percentile(total, 50):.2f} | {percentile(total, 90):.2f} | "
              f"{percentile(total, 99):.2f} | {statistics.mean(total):.2f} | {percentile(t_adapt, 50):.2f} | "
              f"{percentile(t_rec, 50):.2f} |", flush=True)

    # many users at once: adapt a TaskBatch, score the whole catalogue
    tasks = split.test["new_users"]
    all_items = personalizer.all_items
    vec, proj, gram = personalizer.catalogue_vec, personalizer.catalogue_proj, personalizer.catalogue_gram
    print("\n| K | users per batch | users/s median (min-max) | ms per batch |")
    print("|---|---|---|---|")
    for steps in args.steps:
        for size in args.batch:
            batches = list(tasks.batches(size, bucket=True))  # similar support lengths together (less padding)
            batches = [b for b in batches if len(b) == size] or batches[:1]
            rates, per_batch = [], []
            for rep in range(4):
                t0 = time.perf_counter()
                for b in batches:
                    adapted, task = learner.adapt(b, steps=steps)
                    scores = learner.predict_items(adapted, task, all_items, vec, proj, gram)
                    assert scores.shape == (len(b), n_items)
                dt = time.perf_counter() - t0
                if rep:  # the first pass warms up
                    rates.append(sum(map(len, batches)) / dt)
                    per_batch.append(dt / len(batches) * 1e3)
            print(f"| {steps} | {size} | {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) | "
                  f"{statistics.median(per_batch):.1f} |", flush=True)
    print(f"\nthreads={torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
