"""`metarec demo` through typer's runner, on small settings: the table, the plot, the sample user."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import DataError

runner = CliRunner()


@pytest.mark.slow
def test_demo_ml100k_table_plot_and_top10(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("COLUMNS", "120")
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "2", "--no-download"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "ml-100k: 943 users" in text and "synthetic" not in text
    # one row per method and scenario: the adapted meta-learner, its initialisation and both baselines
    for method in ("MAML, adapted", "MAML, no adapt", "bias fold-in", "MF fold-in"):
        assert text.count(method) == 3, method
    for scenario in ("new users (", "new items (", "both new ("):
        assert scenario in text
    numbers = [float(x) for x in re.findall(r"│\s+(\d\.\d{4})\s+│\s+(\d\.\d{4})\s+│", text) for x in x]
    assert len(numbers) == 24 and all(0 <= x < 2 for x in numbers)
    plot = out / "demo.png"
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {plot}" in text.replace("\n", "")
    assert (out / "best" / "model.safetensors").exists()
    # the sample user: 5 rated movies with titles, then a top-10 of titled movies not among them
    block = text[text.index("rated 5 movies:"):]
    rated = re.findall(r"^\s+([1-5])\s+(\S.*\(\d{4}\))\s*$", block, flags=re.M)
    assert len(rated) == 5
    top = re.findall(r"│\s+(\d+) │ (\d+)\s+│\s+(\d\.\d\d) │ (.+?)\s+│", block)
    assert [int(r[0]) for r in top] == list(range(1, 11))
    titles = {t for _, t in rated}
    assert all(r[3] and r[3] not in titles for r in top)
    scores = [float(r[2]) for r in top]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_demo_offline_without_data_uses_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise DataError("download failed (ConnectionError: offline)")

    monkeypatch.setattr("metarec.data.fetch.fetch_dataset", offline)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    notices = [line for line in result.output.splitlines() if "synthetic dataset" in line]
    assert len(notices) == 1, result.output
    assert "bias fold-in" in result.stdout and (tmp_path / "demo" / "demo.png").exists()


def test_demo_settings_are_the_benchmark_config():
    """`metarec demo` trains with configs/ml100k.toml's settings (the package cannot read configs/)."""
    from pathlib import Path

    from metarec.demo import demo_config
    from metarec.meta.run import RunConfig

    repo = Path(__file__).resolve().parents[2]
    expected = RunConfig.from_toml(repo / "configs" / "ml100k.toml").to_dict()
    actual = demo_config("ml-100k", 30).to_dict()
    for section in ("split", "model", "meta", "train"):
        assert actual[section] == expected[section], section
