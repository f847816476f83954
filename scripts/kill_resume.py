"""SIGKILL a training run at random moments (mid-epoch, mid-save) and resume it: the finished run must
equal an uninterrupted one bit for bit, its metrics.jsonl must list every epoch once, and no temporary or
backup folder may be left.

Each trial starts ``metarec train`` on the synthetic dataset (a checkpoint every epoch, so saving is a
large share of the time), kills it with SIGKILL after a random delay, then runs ``metarec train --resume``
(or, when the kill came before the first checkpoint, trains again with ``--overwrite``) until the run is
complete, possibly killing the resumed run too.

    python scripts/kill_resume.py --kills 100        # ~10 min on 2 cores
    python scripts/kill_resume.py --kills 1          # what CI runs (tests/test_kill_resume.py)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = ["--dataset", "synthetic", "--model", "feature-mlp", "--epochs", "6", "--patience", "50", "--seed", "3"]


def train(out: Path, *extra: str, kill_after: float | None = None) -> bool:
    """Run ``metarec train``; True when it finished, False when it was killed."""
    command = [sys.executable, "-m", "metarec.cli", "train", *extra, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return False
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
    return True


def tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return {name: load_file(str(run / "last" / name)) for name in ("model.safetensors", "optimizer.safetensors")}


def same(a: dict, b: dict) -> bool:
    import torch

    return all(a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a)


def trial(rng: random.Random, reference: dict, duration: float, folder: Path) -> tuple[list[str], int]:
    """One killed-and-resumed run: the problems found (empty: it matched) and how many kills it took."""
    out = folder / "run"
    kills, finished = 0, False
    delay = rng.uniform(0.3, duration)
    finished = train(out, *TRAIN, kill_after=delay)
    kills += not finished
    while not finished:
        resumable = (out / "config.toml").is_file() and (out / "last").is_dir()
        args = ["--resume"] if resumable else [*TRAIN, "--overwrite"]
        again = rng.uniform(0.3, duration) if rng.random() < 0.3 else None  # sometimes kill the resumed run too
        finished = train(out, *args, kill_after=again)
        kills += not finished
    problems = []
    if not same(tensors(out), reference):
        problems.append(f"killed after {delay:.2f}s: the resumed run differs from the uninterrupted one")
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    if epochs != list(range(-1, 6)):
        problems.append(f"killed after {delay:.2f}s: metrics.jsonl epochs {epochs}")
    left = [p.name for p in out.parent.rglob("*") if p.name.endswith((".tmp", ".bak"))]
    if left:
        problems.append(f"killed after {delay:.2f}s: left behind {left}")
    return problems, kills


def run(kills: int, seed: int = 0) -> tuple[int, list[str]]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="metarec-kill-") as tmp:
        started = time.perf_counter()
        reference_run = Path(tmp) / "reference"
        train(reference_run, *TRAIN)
        duration = time.perf_counter() - started
        reference = tensors(reference_run)
        done, problems, k = 0, [], 0
        while done < kills:
            folder = Path(tmp) / f"t{k}"
            folder.mkdir()
            found, n = trial(rng, reference, duration, folder)
            problems += found
            done += n
            k += 1
        return done, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    kills, problems = run(args.kills, args.seed)
    print(f"# kill_resume: {kills} SIGKILLs, {len(problems)} problems, {time.perf_counter() - started:.0f}s")
    for line in problems:
        print("FAIL", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
