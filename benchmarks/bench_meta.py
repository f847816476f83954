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

With ``--melu-code PATH`` (or ``$METAREC_MELU_CODE``: a checkout of github.com/hoyeoplee/MeLU, which is
imported from there, never copied here) it also times their ``MeLU.global_update`` on the same
meta-batches, converted to their dense input layout, interleaved with the engine and the loop (second
order only: their code has no first-order variant), and prints engine / MeLU official beside engine /
loop. It ends with issue 21's two K = 1 second-order targets (naive-equivalent >= 30 % of the mm
ceiling, engine >= 50x MeLU's code), met or not, from this run. ``--clock cpu`` times the process's CPU
time instead of elapsed time, for a machine other processes are loading.

    METAREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_meta.py [--threads 1] [--repeats 5] \
        [--melu-code /path/to/MeLU] [--clock cpu]
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

TARGET_CEILING_PCT = 30.0  # K = 1 second order, naive-equivalent FLOPs, % of the mm ceiling
TARGET_VS_MELU = 50.0  # K = 1 second order, engine / MeLU's official code, same meta-batches

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


# "wall": elapsed time; "cpu": this process's CPU time (all its threads), which time-slicing by other
# processes on a loaded machine does not inflate (shared caches and memory bandwidth still do).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_batches(step, learner, batches, clock=time.perf_counter) -> float:
    """Seconds (of ``clock``) to run ``step`` over every batch once."""
    start = clock()
    for b in batches:
        step(learner, b)
    return clock() - start


def count_flops(step, learner, batches) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    learner = copy.deepcopy(learner)
    with FlopCounterMode(display=False) as counter:
        for b in batches:
            step(learner, b)
    return float(counter.get_total_flops())


def mm_ceiling(threads: int, repeats: int = 5, clock=time.perf_counter) -> dict[str, float]:
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
            start = clock()
            for _ in range(reps):
                torch.mm(a, b)
            best.append(flops * reps / (clock() - start) / 1e9)
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


# ----------------------------------------------------------- MeLU's official code, side by side
# Their ``user_preference_estimator.forward`` slices fixed column blocks of a dense [n, 10246] long row:
# rate index | 25 genre multi-hot | 2186 director multi-hot | 8030 actor multi-hot | gender, age,
# occupation, zip indices. Those block widths are literals in their code, so they are kept; our codes
# (ml-1m-imdb vocabularies, fitted on meta-train) are laid into them (position = our code) and the
# spare columns stay 0. Their embedding tables (rate, gender, age, occupation, zip) get our sizes.
MELU_OFFICIAL_BLOCKS = (("imdb_genres", "num_genre", 25), ("directors", "num_director", 2186), ("actors", "num_actor", 8030))
MELU_OFFICIAL_SINGLE = (("rate", "num_rate"),)
MELU_OFFICIAL_USER = (("gender", "num_gender"), ("age", "num_age"), ("occupation", "num_occupation"),
                      ("zip_prefix", "num_zipcode"))
MELU_OFFICIAL_WIDTH = 1 + sum(w for _, _, w in MELU_OFFICIAL_BLOCKS) + len(MELU_OFFICIAL_USER)  # 10246


def melu_official_sizes(item_encoder, user_encoder) -> dict[str, int]:
    """Their config's vocabulary sizes for our encoders: embedding tables sized to our cardinalities,
    multi-hot blocks at their fixed widths (after checking our vocabularies fit in them)."""
    item, user = item_encoder.cardinalities, user_encoder.cardinalities
    sizes = {key: item[col] for col, key in MELU_OFFICIAL_SINGLE}
    sizes.update({key: user[col] for col, key in MELU_OFFICIAL_USER})
    for col, key, width in MELU_OFFICIAL_BLOCKS:
        if item[col] > width:
            raise ValueError(f"{col}: {item[col]} codes do not fit MeLU's fixed {width}-column block")
        sizes[key] = width
    return sizes


def melu_official_item_rows(item_features) -> torch.Tensor:
    """[n_items, 10242] long: each item's rate index and multi-hot blocks in MeLU's layout. A multi-hot
    position is our code (pad 0 never set; 1 = our 'unknown value'), except that an item with an empty
    bag gets a 1 at the block's position 0, so their mean pooling divides by 1, not 0 (ours gives a
    zero vector there; without it their forward would produce NaN)."""
    n = len(item_features)
    parts = [item_features.single["rate"].reshape(n, 1).long()]
    for col, _, width in MELU_OFFICIAL_BLOCKS:
        codes = item_features.multi[col].long()
        block = torch.zeros(n, width, dtype=torch.long)
        block.scatter_(1, codes, 1)
        block[:, 0] = (codes == 0).all(1).long()
        parts.append(block)
    return torch.cat(parts, 1)


def melu_official_user_rows(user_features) -> torch.Tensor:
    """[n_users, 4] long: gender, age, occupation, zip indices (our codes)."""
    return torch.stack([user_features.single[col].long() for col, _ in MELU_OFFICIAL_USER], 1)


def melu_official_batch(batch, item_rows: torch.Tensor, user_rows: torch.Tensor) -> tuple[list, list, list, list]:
    """One of our meta-batches as the four lists ``MeLU.global_update`` takes: per task (padding
    dropped) x [n, 10246] long and y [n] float ratings."""
    sx, sy, qx, qy = [], [], [], []
    for t in range(len(batch)):
        user = user_rows[batch.user_idx[t]].reshape(1, -1)
        for items, ratings, mask, xs, ys in ((batch.support_item, batch.support_rating, batch.support_mask, sx, sy),
                                            (batch.query_item, batch.query_rating, batch.query_mask, qx, qy)):
            keep = mask[t] > 0
            rows = item_rows[items[t][keep]]
            xs.append(torch.cat([rows, user.expand(rows.shape[0], -1)], 1).contiguous())
            ys.append(ratings[t][keep].float().contiguous())
    return sx, sy, qx, qy


def melu_code_path(arg: str | None) -> str | None:
    return arg or os.environ.get("METAREC_MELU_CODE") or None


def load_melu_official(path: str):
    """Their ``MeLU`` class and ``config`` dict, imported from a checkout of hoyeoplee/MeLU."""
    import importlib

    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "MeLU.py")):
        raise FileNotFoundError(f"--melu-code {path}: no MeLU.py there (a checkout of github.com/hoyeoplee/MeLU)")
    sys.path.insert(0, path)
    try:
        melu_module = importlib.import_module("MeLU")
        options = importlib.import_module("options")
    finally:
        sys.path.remove(path)
    return melu_module.MeLU, dict(options.config)


class MeluOfficial:
    """Their model on CPU with their config (lr, local_lr, embedding 32, fc 64/64), our vocabulary sizes."""

    def __init__(self, path: str, features, inner_steps: int, seed: int = 0):
        melu_cls, config = load_melu_official(path)
        config.update(melu_official_sizes(features.item_encoder, features.user_encoder), use_cuda=False)
        self.config = config
        self.inner_steps = inner_steps
        torch.manual_seed(seed)
        self.model = melu_cls(config)
        self.model.train()
        torch11_load_state_dict(self.model.model)


def torch11_load_state_dict(module: torch.nn.Module) -> None:
    """Give ``module`` torch 1.1's ``load_state_dict`` copy semantics (MeLU's code was written for torch 1.1).

    There, ``load_state_dict`` copied into ``param.data``, which autograd's version counter does not see.
    Today's torch copies into the parameter itself under no_grad, so ``MeLU.forward`` restoring the
    kept weights after the query forward makes their ``losses_q.backward()`` fail ("modified by an inplace
    operation"). This wrapper on their model instance (their files untouched) does the same copies through
    ``.data``, with fewer checks than today's ``load_state_dict``: if anything, it flatters their speed."""
    def load_state_dict(state_dict, strict: bool = True):
        own = module.state_dict(keep_vars=True)
        if strict and set(own) != set(state_dict):
            raise KeyError(f"state_dict keys differ: {sorted(set(own) ^ set(state_dict))}")
        for name, tensor in own.items():
            if name in state_dict:
                tensor.data.copy_(state_dict[name])

    module.load_state_dict = load_state_dict


def melu_official_step(runner: MeluOfficial, batch) -> None:
    runner.model.global_update(*(list(part) for part in batch), runner.inner_steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--batches", type=int, default=12, help="meta-batches per timed run (default 12)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-loop", action="store_true", help="time the engine only")
    parser.add_argument("--melu-code", metavar="PATH", default=None,
                        help="a checkout of github.com/hoyeoplee/MeLU: also time their MeLU.global_update on the same "
                             "meta-batches (second order only; default: $METAREC_MELU_CODE)")
    parser.add_argument("--compile", action="store_true",
                        help="the engine with meta.compile_kernel (torch.compile of the one-step kernel; off by "
                             "default in the library): the compilation runs in the warm-up, outside the timing")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time (default); cpu: the process's CPU time, for a loaded shared machine")
    args = parser.parse_args(argv)
    clock = CLOCKS[args.clock]
    melu_path = melu_code_path(args.melu_code)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    split = melu_split()
    from metarec.meta.kernels import one_step as one_step_kernel
    from metarec.tasks.features import encode_features

    feats = encode_features(split)
    tasks = split.meta_train
    batches = sample_batches(tasks, args.batch_size, args.batches)
    n_tasks = sum(map(len, batches))
    real = float(sum(float(b.support_mask.sum()) for b in batches)) / n_tasks
    width = float(np.mean([b.support_mask.shape[1] for b in batches]))
    melu_batches = None
    if melu_path and "maml" in args.algorithms:
        load_melu_official(melu_path)  # fail early on a wrong path
        item_rows, user_rows = melu_official_item_rows(feats.item_features), melu_official_user_rows(feats.user_features)
        melu_batches = [melu_official_batch(b, item_rows, user_rows) for b in batches]
        del item_rows
    print(f"# bench_meta: ml-1m-imdb, MeLU features and sizes, melu split seed 0 ({time.perf_counter() - t0:.1f}s setup)")
    print(f"# torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, {platform.processor() or platform.machine()}")
    print(f"# meta-train tasks {len(tasks)}, support {tasks.support_sizes.min()}-{tasks.support_sizes.max()} "
          f"(median {np.median(tasks.support_sizes):.0f}, mean {tasks.support_sizes.mean():.1f}), query "
          f"{int(np.median(tasks.query_sizes))}; meta-batch {args.batch_size}")
    if args.compile:
        print("# engine: meta.compile_kernel = true (torch.compile of the one-step kernel; compiled in the warm-up; "
              "FLOPs counted on the same maths run eagerly)")
    print(f"# timed ({args.clock} clock): the same {len(batches)} meta-batches ({n_tasks} tasks) for engine, loop"
          f"{' and MeLU official' if melu_batches else ''}, alternately; mean support {real:.1f}, mean padded width {width:.1f}")
    if melu_batches:
        sizes = melu_official_sizes(feats.item_encoder, feats.user_encoder)
        print(f"# MeLU official: {os.path.abspath(melu_path)}, MeLU.global_update, their config (lr, local_lr, "
              f"embedding 32, fc 64/64), use_cuda False, dense x [n, {MELU_OFFICIAL_WIDTH}] long, sizes "
              + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    elif melu_path:
        print("# MeLU official: not measured (their code is second order only; add maml to --algorithms)")
    else:
        print("# MeLU official: not measured; pass --melu-code PATH (or set METAREC_MELU_CODE) to a checkout of "
              "github.com/hoyeoplee/MeLU to time it side by side")
    ceiling = mm_ceiling(args.threads, clock=clock)
    for k, v in ceiling.items():
        print(f"# ceiling {k}: {v:.1f} GFLOP/s")
    peak = max(ceiling.values())

    rows = []
    for steps in args.steps:
        for algorithm in args.algorithms:
            base = melu_learner(split, feats, algorithm=algorithm, inner_steps=steps)
            eng, loop = copy.deepcopy(base), copy.deepcopy(base)
            if args.compile:
                eng.config = dataclasses.replace(eng.config, compile_kernel=True)
            melu = MeluOfficial(melu_path, feats, steps) if melu_batches and algorithm == "maml" else None
            time_batches(engine_step, eng, batches if args.compile else batches[:3])  # warm-up (and compilation)
            if args.compile and "failed" in one_step_kernel._COMPILED:
                print(f"# torch.compile failed, the engine runs eagerly: {one_step_kernel._COMPILED['failed'].splitlines()[0][:200]}")
            if not args.no_loop:
                time_batches(loop_step, loop, batches[:1])
            if melu is not None:
                time_batches(melu_official_step, melu, melu_batches[:1])
            e_rates, l_rates, m_rates = [], [], []
            for _ in range(args.repeats):  # alternate, so drift on a shared machine hits all alike
                e_rates.append(n_tasks / time_batches(engine_step, eng, batches, clock))
                if not args.no_loop:
                    l_rates.append(n_tasks / time_batches(loop_step, loop, batches, clock))
                if melu is not None:
                    m_rates.append(n_tasks / time_batches(melu_official_step, melu, melu_batches, clock))
            executed = count_flops(engine_step, base, batches) / n_tasks
            useful = count_flops(loop_step, base, batches) / n_tasks
            rows.append((steps, algorithm, e_rates, l_rates, m_rates, useful, executed))
            e = statistics.median(e_rates)
            msg = f"K={steps} {algorithm:6s} engine {fmt_rate(e_rates)} tasks/s"
            if l_rates:
                msg += f" | loop {fmt_rate(l_rates)} tasks/s | ratio {e / statistics.median(l_rates):.1f}x"
            if m_rates:
                msg += f" | MeLU official {fmt_rate(m_rates)} tasks/s | ratio {e / statistics.median(m_rates):.1f}x"
            print(msg, flush=True)

    print()
    print("| K | order | engine tasks/s, median (min-max) | loop tasks/s, median (min-max) | engine / loop | "
          "MeLU official tasks/s, median (min-max) | engine / MeLU official | "
          "MFLOP/task: loop (naive) / engine | engine GFLOP/s executed (naive-equivalent) | % of mm ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    targets = None
    for steps, algorithm, e_rates, l_rates, m_rates, useful, executed in rows:
        e = statistics.median(e_rates)
        order = "2nd (maml)" if algorithm == "maml" else "1st (fomaml)" if algorithm == "fomaml" else algorithm
        loop_txt = fmt_rate(l_rates).strip() if l_rates else "-"
        ratio = f"{e / statistics.median(l_rates):.1f}x" if l_rates else "-"
        melu_txt = fmt_rate(m_rates).strip() if m_rates else "-"
        melu_ratio = f"{e / statistics.median(m_rates):.1f}x" if m_rates else "-"
        g_exec, g_naive = executed * e / 1e9, useful * e / 1e9
        print(f"| {steps} | {order} | {fmt_rate(e_rates).strip()} | {loop_txt} | {ratio} | {melu_txt} | {melu_ratio} | "
              f"{useful / 1e6:.2f} / {executed / 1e6:.2f} | {g_exec:.1f} ({g_naive:.1f}) | "
              f"{100 * g_exec / peak:.0f}% ({100 * g_naive / peak:.0f}%) |")
        if steps == 1 and algorithm == "maml":
            targets = (100 * g_naive / peak, e / statistics.median(m_rates) if m_rates else None)
    print(f"\nclock={args.clock}; threads={torch.get_num_threads()}; mm ceiling {peak:.1f} GFLOP/s; repeats={args.repeats}; "
          "FLOPs counted with torch.utils.flop_counter.FlopCounterMode (matmul-family ops) over the timed batches")
    print()
    print("Targets (issue 21), K=1 second order, this run:")
    if targets is None:
        print("  not measured (run with --steps 1 and --algorithms maml)")
    else:
        pct, vs_melu = targets
        print(f"  naive-equivalent % of mm ceiling: {pct:.0f}% (target >= {TARGET_CEILING_PCT:.0f}%): "
              f"{'met' if pct >= TARGET_CEILING_PCT else 'NOT met'}")
        if vs_melu is None:
            print(f"  engine / MeLU official: not measured (target >= {TARGET_VS_MELU:.0f}x); pass --melu-code PATH")
        else:
            print(f"  engine / MeLU official: {vs_melu:.1f}x (target >= {TARGET_VS_MELU:.0f}x): "
                  f"{'met' if vs_melu >= TARGET_VS_MELU else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
