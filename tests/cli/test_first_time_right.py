"""A newcomer's first commands (issue 23): output that agrees with itself, bad flags refused in one line,
feedback while slow commands run. One ML-100K run of one epoch serves every test here."""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress, TextColumn
from typer.testing import CliRunner

from metarec.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _recording_bars(buffer: io.StringIO):
    """progress_bars() that draw into ``buffer`` as on a terminal (the runner's stderr is not one); the
    command modules are reached through importlib, as ``metarec.cli.train`` is also the command's name."""
    def bars() -> Progress:
        return Progress(TextColumn("{task.description} {task.completed}/{task.total}"),
                        console=Console(file=buffer, force_terminal=True, width=300), auto_refresh=False)
    return bars


@pytest.fixture(scope="module")
def ml100k_run(tmp_path_factory, data_dir) -> tuple[Path, str]:
    """The recipe's model (closed-form fold-in), one epoch, no search; and what its bars drew."""
    out = tmp_path_factory.mktemp("runs") / "run"
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAREC_DATA_DIR", str(data_dir))
        mp.setattr(importlib.import_module("metarec.cli.train"), "progress_bars", _recording_bars(buffer))
        result = run("train", "--dataset", "ml-100k", "--no-search", "--epochs", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, buffer.getvalue()


def test_training_bar_shows_the_epochs_loss_and_validation_mae(ml100k_run):
    out, drawn = ml100k_run
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"train loss {record['train_loss']:.4f}" in drawn
    assert f"validation MAE {record['val_mae']:.4f}" in drawn


def test_recommend_reads_only_the_item_titles(ml100k_run, data_dir, monkeypatch):
    """Titles come from u.item alone: neither the ratings nor the split are loaded for a top-k."""
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))

    def refuse(*args, **kwargs):
        raise AssertionError("recommend loaded the whole dataset")

    monkeypatch.setattr("metarec.data.loaders.registry.load_data", refuse)
    monkeypatch.setattr("metarec.data.loaders.registry.load_dataset", refuse)
    result = run("recommend", str(ml100k_run[0]), "--rate", "50:5", "--rate", "181:4", "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert len(items) == 3 and all(item["title"].endswith(")") for item in items)  # "Title (1996)"


@pytest.mark.parametrize("args,message", [
    (["--k", "0"], "--k 0: k must be a positive integer"),
    (["--k", "-3"], "--k -3: k must be a positive integer"),
    (["--user", "age=abc"], "user attribute 'age' must be a finite number, got 'abc'"),
])
def test_recommend_refuses_bad_values_in_one_line_naming_the_field(ml100k_run, data_dir, monkeypatch, args, message):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    result = runner.invoke(app, ["recommend", str(ml100k_run[0]), "--rate", "50:5", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_bad_k_fails_before_anything_loads(tmp_path):
    result = runner.invoke(app, ["recommend", str(tmp_path / "no-such-run"), "--rate", "50:5", "--k", "0"])
    assert result.exit_code == 1 and "--k 0" in result.output, result.output


def test_evaluate_shows_progress_and_its_history_rule(ml100k_run, data_dir, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    buffer = io.StringIO()
    monkeypatch.setattr(importlib.import_module("metarec.cli.evaluate"), "progress_bars", _recording_bars(buffer))
    monkeypatch.setenv("COLUMNS", "200")
    result = run("evaluate", str(ml100k_run[0]))
    assert result.exit_code == 0, result.output
    assert "scoring test users: done 4/4" in buffer.getvalue()
    assert "known users' history (warm, new items): every task, as the prior of the fold-in" in result.stdout


def test_data_split_shows_the_split_train_uses(ml100k_run, data_dir, monkeypatch, tmp_path):
    """`data split --config X` builds the split `train --config X` trains on: the same fingerprint."""
    from metarec.data.loaders.registry import load_data
    from metarec.meta.run import RunConfig
    from metarec.tasks import make_split

    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    config = tmp_path / "run.toml"
    config.write_text("[data]\ndataset = 'ml-100k'\n[split]\nseed = 3\nheavy_users = 'drop'\n")
    result = run("data", "split", "--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    from metarec.cli.options import layered_run_config

    cfg, _ = layered_run_config(config, None, None, None, {}, {})
    assert (cfg.split.seed, cfg.split.heavy_users) == (3, "drop")
    assert shown["fingerprint"] == make_split(load_data(cfg.data), cfg.split).fingerprint()
    # without --config: the recipe's split, the one plain `metarec train` used for the run above
    trained = RunConfig.from_toml(ml100k_run[0] / "config.toml")
    plain = json.loads(run("data", "split", "ml-100k", "--json").stdout)
    assert plain["fingerprint"] == make_split(load_data(trained.data), trained.split).fingerprint()


def test_data_fetch_draws_a_download_bar_from_the_librarys_callback(tmp_path, monkeypatch):
    seen = {}

    def fake_fetch(name, *, cache=None, progress=None):
        assert callable(progress), "the command must pass a progress callback"
        progress(512, 1024)
        progress(1024, 1024)
        seen["called"] = True
        return tmp_path / name

    monkeypatch.setattr("metarec.data.fetch.fetch_dataset", fake_fetch)
    result = run("data", "fetch", "ml-100k")
    assert result.exit_code == 0 and seen["called"], result.output


def test_recommend_without_the_data_serves_ids_only(ml100k_run, tmp_path, monkeypatch):
    """The run's dataset is not where it was: a top-k still comes, with ids and no titles."""
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path))
    result = run("recommend", str(ml100k_run[0]), "--rate", "50:5", "--rate", "181:4", "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert len(items) == 3 and all(item["item_id"] and not item.get("title") for item in items)
