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

A large catalogue (``--items N``, needs metarec[ann]): a neural-cf model on the same split, its catalogue
replaced by N synthetic item vectors of the model's width (each column Gaussian with the mean and
spread of that column of the model's own item vectors); one new user at a time is adapted (K = the
first ``--steps``), then scored and ranked against the N items by the exact top-k (one product, the
selection) and by the approximate one (faiss HNSW, :mod:`metarec.serve.topk`), both on the same
adapted user, alternately: p50 / p99 of adapt + score + top-k per mode, recall@10 of the approximate
lists against exact over ``--recall-users`` random new users (their support excluded, as served),
the index's build time and memory. The issue's 1M-item run (~2 GB of memory, a minute or more to
build the index on 16 cores):

    METAREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_adapt.py --items 1000000 [--hnsw-m 32]
        [--ef-construction 200] [--ef-search 128] [--build-threads N] [--users 500] [--recall-users 300]
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


def preset_checkpoint(preset: str, split, train_epochs: int = 0, seed: int = 0):
    """A checkpoint of ``preset`` on ml-1m-imdb's ``split``: freshly initialised, or after ``train_epochs``."""
    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import Trainer

    config = RunConfig.preset(preset).override("data", dataset="ml-1m-imdb").override("train", epochs=train_epochs, seed=seed)
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
    parser.add_argument("--items", type=int, default=0, help="a synthetic catalogue of this many items: exact "
                        "against approximate top-k (a neural-cf model; see the docstring)")
    parser.add_argument("--recall-users", type=int, default=300)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--build-threads", type=int, default=None, help="index build threads (default: every CPU)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.items:
        return large_catalogue(args)
    from metarec.serve.personalizer import Personalizer

    split = melu_split()
    ckpt = preset_checkpoint("melu", split, args.train_epochs)
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




def rss_mb() -> float:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def large_catalogue(args) -> int:
    """``--items N``: exact against approximate top-k over N synthetic item vectors (see the docstring)."""
    from metarec.serve.personalizer import Personalizer
    from metarec.serve.topk import (ApproximateTopK, ExactTopK, HNSWConfig, LinearCatalogue, LinearUsers,
                                    approximate_recall)

    split = melu_split()
    personalizer = Personalizer(preset_checkpoint("neural-cf", split, args.train_epochs))
    model, steps, users = personalizer.learner.model, args.steps[0], new_users(split)
    real = personalizer.catalogue_vec
    if args.items < len(real):  # the new users' support items index the synthetic catalogue too
        raise SystemExit(f"--items must be at least the real catalogue's {len(real):,} items, got {args.items:,}")
    gen = torch.Generator().manual_seed(0)
    vectors = real.mean(0) + torch.randn(args.items, real.shape[1], generator=gen) * real.std(0)
    catalogue = LinearCatalogue(vectors, None if model.implicit else tuple(map(float, model.rating_scale)))
    config = HNSWConfig(m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                        build_threads=args.build_threads)
    before = rss_mb()
    approx, exact = ApproximateTopK(catalogue, config), ExactTopK()
    grown = rss_mb() - before
    print(f"# bench_adapt --items: ml-1m-imdb new users, neural-cf ({'freshly initialised' if not args.train_epochs else f'{args.train_epochs}-epoch'}), "
          f"{args.items:,} synthetic items of width {real.shape[1]}, K = {steps}")
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, {platform.machine()}; "
          f"faiss {approx.faiss.__version__}, build threads {args.build_threads or os.cpu_count()}")

    rankers = {"exact": exact, "approximate": approx}
    rng = np.random.default_rng(0)
    chosen = [users[i % len(users)] for i in range(args.users)]
    times = {name: [] for name in rankers}
    top_times = {name: [] for name in rankers}
    for rep, (ratings, attrs) in enumerate([*chosen[:20], *chosen]):  # the first 20: warm-up
        t0 = time.perf_counter()
        user = personalizer.adapt(ratings, attrs, steps=steps)
        w, c = user.weights()
        adapt = time.perf_counter() - t0
        for name in (rankers if rep % 2 else reversed(list(rankers))):  # alternate which runs first
            t1 = time.perf_counter()
            (idx, _), = rankers[name].search(LinearUsers(catalogue, w, c), [10], [user.rated_idx])
            dt = time.perf_counter() - t1
            assert len(idx) == 10
            if rep >= 20:
                times[name].append((adapt + dt) * 1e3)
                top_times[name].append(dt * 1e3)
    sample = rng.choice(len(users), min(args.recall_users, len(users)), replace=False)
    adapted = [personalizer.adapt(*users[i], steps=steps) for i in sample]
    recall_users = [LinearUsers(catalogue, *a.weights()) for a in adapted]
    recall = approximate_recall(exact, approx, recall_users, 10, [a.rated_idx for a in adapted])

    print(f"\n| top-k | items | users | p50 ms | p99 ms | mean ms | score + top-k p50 ms | recall@10 ({len(sample)} users) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in rankers:
        label = name if name == "exact" else f"approximate (HNSW M={config.m}, efC={config.ef_construction}, efS={config.ef_search})"
        print(f"| {label} | {args.items:,} | {len(times[name])} | {percentile(times[name], 50):.2f} | "
              f"{percentile(times[name], 99):.2f} | {statistics.mean(times[name]):.2f} | "
              f"{percentile(top_times[name], 50):.2f} | {1.0 if name == 'exact' else recall:.3f} |")
    print(f"\nindex build {approx.build_seconds:.1f} s; index {approx.memory_bytes / 2**20:.0f} MB "
          f"(item matrix {vectors.numel() * 4 / 2**20:.0f} MB); resident memory +{grown:.0f} MB while building; "
          f"recall@10 estimate at build (item-like users) {approx.recall_estimate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
