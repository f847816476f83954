"""benchmarks/bench_scale.py runs end to end at a tiny size, prints its tables and removes its Parquet files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"


def test_bench_scale_runs_at_a_tiny_size(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--ratings", "2e4", "--batches", "2", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| ratings | users | items | generate s"))
    cells = [c.strip() for c in lines[header + 2].split("|")[1:-1]]
    assert cells[1] == "400" and len(cells) == 13  # users for 2e4 ratings at 50 a user; every column filled
    assert float(cells[-1]) > 0  # tasks/s
    assert "Cost per rating relative to" in out and "fits in 24 GB" in out
    assert not any(tmp_path.iterdir())  # the temporary Parquet folder is gone
