"""A run folder holds one run: train never overwrites one silently, --resume keeps its settings, and
metrics.jsonl stays strict JSON with every epoch once, across kills and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metarec.cli import app

runner = CliRunner()
FAST = ["--dataset", "synthetic", "--model", "feature-mlp", "--patience", "50"]


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def strict_lines(path: Path) -> list[dict]:
    def refuse(token: str):
        raise AssertionError(f"{path}: {token} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    result = run("train", *FAST, "--epochs", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_a_new_run_never_lands_in_an_old_one(trained, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    result = run("train", *FAST, "--epochs", "1", "--out", str(trained))
    assert result.exit_code == 1 and "already holds a run: --resume continues it, --overwrite replaces it" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before  # untouched

    copy = tmp_path / "copy"
    assert run("train", *FAST, "--epochs", "1", "--out", str(copy)).exit_code == 0
    result = run("train", *FAST, "--epochs", "1", "--seed", "3", "--overwrite", "--out", str(copy))
    assert result.exit_code == 0, result.output
    assert "seed = 3" in (copy / "config.toml").read_text()
    assert [r["epoch"] for r in strict_lines(copy / "metrics.jsonl")] == [-1, 0]


def test_resume_keeps_the_settings_of_the_run(trained):
    config = (trained / "config.toml").read_text()
    result = run("train", "--out", str(trained), "--resume", "--epochs", "9", "--outer-lr", "0.5")
    assert result.exit_code == 1 and "--outer-lr, --epochs would change them" in result.output
    assert (trained / "config.toml").read_text() == config
    result = run("train", "--out", str(trained.parent / "nothing-here"), "--resume")
    assert result.exit_code == 1 and "no run to resume" in result.output


def test_resume_finds_a_checkpoint_a_kill_left_as_its_backup(tmp_path):
    """Killed between the two renames of a save (last -> .last.bak, new -> last): --resume restores the
    backup instead of answering that there is no run to resume."""
    from metarec._io import backup_path
    from metarec.cli.train import check_run_folder

    out = tmp_path / "run"
    (out / "last").mkdir(parents=True)
    (out / "last" / "checkpoint.json").write_text("{}")
    (out / "config.toml").write_text("")
    (out / "last").rename(backup_path(out / "last"))
    check_run_folder(out, True, False, [])
    assert (out / "last" / "checkpoint.json").is_file() and not backup_path(out / "last").exists()


def test_metrics_are_strict_json_with_every_epoch_once_after_a_kill(tmp_path):
    """A run killed after logging epoch 2 but before saving it: the resumed run logs epoch 2 once."""
    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import Trainer

    cfg = RunConfig.preset("feature-mlp", "maml").override("data", dataset="synthetic").override(
        "train", epochs=4, patience=50)
    out = tmp_path / "run"
    Trainer(cfg, run_dir=out).fit(max_epochs=2)
    lines = strict_lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [-1, 0, 1] and lines[0]["train_loss"] is None  # NaN written as null
    with open(out / "metrics.jsonl", "a") as fh:  # the epoch the kill cut off after logging
        fh.write(json.dumps({**lines[-1], "epoch": 2}) + "\n")
    resumed = Trainer(cfg, run_dir=out)
    resumed.resume(out / "last")
    resumed.fit()
    assert [r["epoch"] for r in strict_lines(out / "metrics.jsonl")] == [-1, 0, 1, 2, 3]
    assert [r["epoch"] for r in resumed.history] == [-1, 0, 1, 2, 3]
