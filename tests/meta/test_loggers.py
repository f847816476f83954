"""Metrics loggers: every epoch's record reaches the logger (through `metarec train --log-to`), the
initialisation's does not, a missing tracker is a one-line error naming its extra, and the real
TensorBoard / MLflow loggers write what they received (only where those packages are installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import ConfigError, MissingExtraError
from metarec.meta import loggers
from metarec.meta.loggers import Loggers, MetricsLogger, logger_names, make_logger, scalars
from metarec.meta.run import RunConfig
from tiny_data import random_ratings

RECORDS = [{"epoch": -1, "train_loss": float("nan"), "val_mae": 0.95},
           {"epoch": 0, "train_loss": 1.2, "seconds": 0.5, "val_mae": 0.9, "val_k1_mae": 1.0, "flag": True},
           {"epoch": 1, "train_loss": 1.1, "seconds": 0.4, "val_mae": 0.85, "val_k1_mae": 0.97}]


class FakeLogger:
    """Keeps what it is given."""

    def __init__(self, *args, **kwargs) -> None:
        self.params: list[dict] = []
        self.records: list[dict] = []
        self.closed: list[bool] = []
        FakeLogger.made.append(self)

    made: list["FakeLogger"] = []

    def log_params(self, params) -> None:
        self.params.append(dict(params))

    def log_epoch(self, record) -> None:
        self.records.append(dict(record))

    def close(self, failed: bool = False) -> None:
        self.closed.append(failed)


def test_loggers_forward_every_epoch_but_the_initialisation_and_close_once():
    fake = FakeLogger()
    assert isinstance(fake, MetricsLogger)
    with Loggers([fake]) as both:
        both.log_params({"meta": {"outer_lr": 0.003}})
        both.log_history(RECORDS)
    assert [r["epoch"] for r in fake.records] == [0, 1] and fake.records[0] == RECORDS[1]
    assert fake.closed == [False]
    with pytest.raises(RuntimeError), Loggers([fake]):
        raise RuntimeError("training failed")
    assert fake.closed == [False, True]  # a tracker's run is marked failed
    assert scalars(RECORDS[1]) == {"train_loss": 1.2, "seconds": 0.5, "val_mae": 0.9, "val_k1_mae": 1.0}
    assert scalars(RECORDS[0]) == {"val_mae": 0.95}  # NaN and booleans are no metrics


def test_logger_names_and_missing_packages_fail_in_one_line(monkeypatch, tmp_path):
    assert logger_names(["tensorboard,mlflow", "TensorBoard"]) == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="unknown logger"):
        logger_names(["wandb"])
    assert make_logger([], tmp_path).loggers == []
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'metarec\[tensorboard\]'"):
        make_logger(["tensorboard"], tmp_path)
    with pytest.raises(MissingExtraError, match=r"pip install 'metarec\[mlflow\]'"):
        make_logger(["mlflow"], tmp_path)
    result = CliRunner().invoke(app, ["train", "--dataset", "unused.csv", "--out", str(tmp_path / "run"),
                                      "--log-to", "mlflow"])
    assert result.exit_code == 1 and "metarec[mlflow]" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "config.toml").exists()  # refused before any training


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    """An id-only ratings table small enough that a CLI training takes a fraction of a second."""
    path = tmp_path_factory.mktemp("table") / "ratings.csv"
    random_ratings(np.random.default_rng(0), 100, 40, (12, 25)).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("how", ["plain", "recipe"])
def test_train_sends_each_epochs_record_to_the_logger(how, tiny_table, monkeypatch, tmp_path):
    """Plain: through the trainer's epoch hook as each epoch ends; the recipe (trained in memory): the
    chosen training's records afterwards. Either way, the metrics.jsonl lines of the epochs, in order."""
    FakeLogger.made.clear()
    monkeypatch.setattr(loggers, "TensorBoardLogger", FakeLogger)
    out = tmp_path / "run"
    plain = ["--model", "neural-cf", "--item-ids"] if how == "plain" else []
    result = CliRunner().invoke(app, ["train", "--dataset", str(tiny_table), *plain, "--epochs", "2",
                                      "--patience", "50", "--out", str(out), "--log-to", "tensorboard"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (fake,) = FakeLogger.made
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == ([-1, 0, 1] if how == "plain" else [0, 1])  # -1: the initialisation
    assert fake.records == [r for r in lines if r["epoch"] >= 0]
    assert fake.params == [RunConfig.from_toml(out / "config.toml").to_dict()] and fake.closed == [False]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed "
                    "(pip install 'metarec[tensorboard]')")
def test_tensorboard_logger_writes_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with make_logger(["tensorboard"], tmp_path) as both:
        both.log_params({"meta": {"outer_lr": 0.003}})
        both.log_history(RECORDS)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("validation/mae")] == [(0, 0.9), (1, 0.85)]
    assert [e.step for e in events.Scalars("train/train_loss")] == [0, 1]
    assert "validation/k1_mae" in events.Tags()["scalars"]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed "
                    "(pip install 'metarec[mlflow]')")
def test_mlflow_logger_records_a_finished_run_under_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    with make_logger(["mlflow"], tmp_path / "run") as both:
        both.log_params({"meta": {"outer_lr": 0.003}, "model": {"kind": "neural-cf"}})
        both.log_history(RECORDS)
    (tracker,) = both.loggers
    assert tracker.tracking_uri.startswith("sqlite:///") and (tmp_path / "run" / "mlruns" / "mlflow.db").exists()
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["meta.outer_lr"] == "0.003"
    history = tracker.client.get_metric_history(tracker.run_id, "val_mae")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.9), (1, 0.85)]
