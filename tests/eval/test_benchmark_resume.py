"""``metarec benchmark`` killed part-way, then ``--resume``: the (seed, method) units it had finished are
loaded from ``OUT/partial``, only the rest are fitted, and the results are the uninterrupted run's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import metarec.eval.benchmark.run as benchmark_run
from metarec.cli import app
from metarec.errors import MetarecError
from metarec.eval.benchmark import BenchmarkJournal

runner = CliRunner()


class Killed(Exception):
    """What the test's dying unit raises: the process killed between two methods."""


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """240 users x 60 items (an item effect plus a user bias), 30 ratings each."""
    folder = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(5)
    effect, bias = rng.choice([-1.2, -0.4, 0.4, 1.2], 60), rng.normal(0, 0.4, 240)
    rows = [(u, i, float(np.clip(np.rint(3 + effect[i] + bias[u] + rng.normal(0, 0.4)), 1, 5)))
            for u in range(240) for i in rng.choice(60, 30, replace=False)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(folder / "ratings.csv", index=False)
    return folder / "ratings.csv"


def bench(table: Path, out: Path, *extra: str):
    return runner.invoke(app, ["benchmark", "--dataset", str(table), "--methods", "item-mean,bias,maml", "--seeds", "0,1",
                               "--support-sizes", "1,3", "--no-search", "--epochs", "2", "--out", str(out), *extra],
                         catch_exceptions=False)


def timeless(value):
    """``value`` without what differs between two runs of the same benchmark: seconds and the _fit rows."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if not k.endswith("seconds") and k != "_fit"}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def assert_same_results(resumed: Path, whole: Path) -> None:
    """Two benchmark folders hold the same results.json and results.csv, timings aside."""
    a, b = (json.loads((folder / "results.json").read_text()) for folder in (resumed, whole))
    assert timeless(a) == timeless(b)
    frames = [pd.read_csv(folder / "results.csv") for folder in (resumed, whole)]
    frames = [f[f["scenario"] != "_fit"].reset_index(drop=True) for f in frames]
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_a_killed_benchmark_resumes_to_the_uninterrupted_runs_results(table, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert bench(table, whole).exit_code == 0
    assert not (whole / "partial").exists()  # the journal goes once the results are written

    out = tmp_path / "killed"
    unit, calls = benchmark_run._run_unit, []

    def dying_unit(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 5:  # seed 0's three methods and seed 1's item-mean are done; die in seed 1's bias
            raise Killed
        return unit(*args, **kwargs)

    monkeypatch.setattr(benchmark_run, "_run_unit", dying_unit)
    with pytest.raises(Killed):
        bench(table, out)
    assert sorted(p.name for p in (out / "partial").glob("seed-*")) == [
        "seed-0-bias.json", "seed-0-item-mean.json", "seed-0-maml.json", "seed-1-item-mean.json"]
    assert not (out / "results.json").exists()
    other = bench(table, out, "--resume", "--epochs", "3")  # not the benchmark the journal records
    assert other.exit_code == 1 and "differs in ['run']" in other.output
    assert (out / "partial" / "seed-0-maml.json").exists()  # a refused resume leaves the journal as it was

    calls.clear()
    result = bench(table, out, "--resume")
    assert result.exit_code == 0, result.output
    assert calls == ["bias", "maml"]  # only seed 1's unfinished methods were fitted
    assert_same_results(out, whole)
    assert not (out / "partial").exists()


def test_resume_needs_a_journal(table, tmp_path):
    result = bench(table, tmp_path / "none", "--resume")
    assert result.exit_code == 1 and "no benchmark to resume" in result.output
    with pytest.raises(MetarecError, match="no benchmark to resume"):
        BenchmarkJournal(tmp_path / "none" / "partial").open({"seeds": [0]}, resume=True)


def test_a_killed_implicit_benchmark_resumes_to_the_uninterrupted_runs_results(tmp_path, monkeypatch):
    import metarec.eval.implicit.run as implicit_run

    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{(u % 3) * 20 + j}", float(rng.integers(1, 6)), 1_000_000 + 100 * u + int(j))
            for u in range(240) for j in rng.choice(20, rng.integers(15, 19), replace=False)]
    path = tmp_path / "plays.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(path, index=False)

    def implicit(out: Path, *extra: str):
        return runner.invoke(app, ["benchmark", "--dataset", str(path), "--feedback", "implicit", "--methods",
                                   "popularity,item-knn,ials", "--seeds", "0,1", "--support-sizes", "1,3",
                                   "--out", str(out), *extra], catch_exceptions=False)

    whole = tmp_path / "whole"
    assert implicit(whole).exit_code == 0 and not (whole / "partial").exists()
    out = tmp_path / "killed"
    unit, calls = implicit_run._run_unit, []

    def dying_unit(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 5:  # seed 0's three methods and seed 1's popularity are done; die in seed 1's item-knn
            raise Killed
        return unit(*args, **kwargs)

    monkeypatch.setattr(implicit_run, "_run_unit", dying_unit)
    with pytest.raises(Killed):
        implicit(out)
    assert len(list((out / "partial").glob("seed-*"))) == 4 and not (out / "results.json").exists()
    calls.clear()
    result = implicit(out, "--resume")
    assert result.exit_code == 0, result.output
    assert calls == ["item-knn", "ials"]  # only seed 1's unfinished methods were fitted
    assert_same_results(out, whole)
