"""A full meta-training run on ML-1M with MeLU's setting, to its validation optimum: wall time, peak RSS.

``ml-1m-imdb`` with MeLU's attributes (see bench_meta.py), the MeLU split protocol (seed 0), the ``melu``
model (embedding 32, fc 64-64-1, only the head adapts), MAML with one inner step, meta-batch 32, and
``Trainer``'s early stopping on the validation users' query MAE (``--patience`` epochs without
improvement). MeLU's own learning rates (local 5e-6, global 5e-5) barely adapt and need hundreds of
epochs; the defaults here are the library's (inner 0.05, outer 1e-3). The clock covers everything a
user waits for: loading the dataset, the split, the encoders, training, validation every epoch and
the best checkpoint written to disk; peak RSS is the process's ``ru_maxrss``.

    METAREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_train.py [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time

T0 = time.perf_counter()

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_meta import melu_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algorithm", default="maml")
    parser.add_argument("--steps", type=int, default=1, help="inner steps (default 1)")
    parser.add_argument("--inner-lr", type=float, default=0.05)
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=100, help="upper bound; early stopping ends the run")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--run-dir", default=None, help="where checkpoints go (default: a temporary folder)")
    args = parser.parse_args(argv)

    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import Trainer, evaluate_run, load_best
    from metarec.tasks import make_split

    config = (RunConfig.preset("melu", args.algorithm)
              .override("data", dataset="ml-1m-imdb")
              .override("meta", inner_steps=args.steps, inner_lr=args.inner_lr, outer_lr=args.outer_lr)
              .override("train", epochs=args.epochs, patience=args.patience, threads=args.threads, seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or os.path.join(tmp, "run")
        t_load = time.perf_counter()
        split = make_split(melu_dataset(), config.split)
        t_split = time.perf_counter()
        trainer = Trainer(config, split=split, run_dir=run_dir)
        t_fit = time.perf_counter()
        result = trainer.fit()
        t_end = time.perf_counter()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        test = evaluate_run(load_best(run_dir), split)

    print(f"# bench_train: ml-1m-imdb, MeLU features and sizes, melu split seed 0; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, {platform.machine()}")
    print(f"# {args.algorithm}, K={args.steps}, inner lr {args.inner_lr:g}, outer lr {args.outer_lr:g}, meta-batch "
          f"{config.meta.meta_batch_size}, patience {args.patience}, max epochs {args.epochs}; "
          f"{len(split.meta_train)} meta-train tasks")
    print("\n| epoch | train loss | val MAE | seconds (train) |")
    print("|---|---|---|---|")
    for r in result.history:
        print(f"| {r['epoch']} | {r['train_loss']:.4f} | {r['val_mae']:.4f} | {r['seconds']:.2f} |")
    train_s = sum(r["seconds"] for r in result.history)
    print(f"\nbest epoch {result.best_epoch} (val MAE {result.best_val_mae:.4f}), {result.epochs_run} epochs run")
    print("test (best checkpoint): " + ", ".join(f"{k} MAE {v['mae']:.4f} (no adapt {v['mae_no_adapt']:.4f})"
                                                for k, v in test.items()))
    print(f"wall: total {t_end - T0:.1f} s (imports {t_load - T0:.1f}, data + split {t_split - t_load:.1f}, "
          f"features + model {t_fit - t_split:.1f}, fit {t_end - t_fit:.1f} of which meta-steps {train_s:.1f}, "
          f"validation + checkpoints {t_end - t_fit - train_s:.1f})")
    print(f"peak RSS: {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
