"""``metarec train --feedback implicit`` through the CLI: a run folder that loads as any other (config,
metrics, checkpoint, model card), ``metarec recommend --item`` on it, and the flags that do not apply refused."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from implicit_tables import block_of, write_play_tables
from typer.testing import CliRunner

from metarec.cli import app
from metarec.data.loaders.registry import load_data
from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.run import DataConfig, RunConfig
from metarec.errors import ConfigError

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> list[str]:
    return write_play_tables(tmp_path_factory.mktemp("plays"))


@pytest.fixture(scope="module")
def implicit_run(tables, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("implicit") / "run"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy machine's spinning OpenMP threads make this tiny run 10x slower
    try:
        result = run("train", "--feedback", "implicit", *tables, "--epochs", "2", "--seed", "1", "--out", str(out))
    finally:
        torch.set_num_threads(previous)
    assert result.exit_code == 0, result.output
    assert "validation ndcg@20" in result.output and "MAE" not in result.output
    return out


def test_the_run_folder_is_an_implicit_run(implicit_run):
    assert {p.name for p in implicit_run.iterdir()} >= {"config.toml", "metrics.jsonl", "best", "MODEL_CARD.md"}
    saved = tomllib.loads((implicit_run / "config.toml").read_text())
    assert saved["data"]["feedback"] == "implicit" and saved["model"]["implicit"] is True
    assert saved["implicit"]["epochs"] == 2 and saved["implicit"]["seed"] == 1
    assert set(saved["train"]) <= {"seed", "device", "threads"}  # the schedule is [implicit]'s
    config = RunConfig.from_toml(implicit_run / "config.toml")
    assert config.is_implicit and config.split.seed == 1
    assert RunConfig.from_dict(config.to_dict()) == config  # the round trip is exact
    history = [json.loads(line) for line in (implicit_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1] and all(0 <= r["val_score"] <= 1 for r in history)
    checkpoint = load_checkpoint(implicit_run / "best")
    assert checkpoint.model_config.implicit and checkpoint.state["feedback"] == "implicit"
    assert checkpoint.state["best_val_score"] == pytest.approx(max(r["val_score"] for r in history), abs=1e-6)
    assert RunConfig.from_dict(checkpoint.run_config) == config
    card = (implicit_run / "MODEL_CARD.md").read_text()
    assert "implicit feedback" in card and "ndcg@20" in card and "predicted rating" not in card


def test_recommend_takes_items_and_ranks_the_users_cluster_first(implicit_run):
    support = ["i1", "i2", "i5"]  # cluster 0's block
    result = run("recommend", str(implicit_run), *[a for i in support for a in ("--item", i)], "--k", "5", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    ids = [item["item_id"] for item in answer["items"]]
    assert len(ids) == 5 and not set(ids) & set(support) and answer["unknown_item_ids"] == []
    assert all(isinstance(item["score"], float) and item["title"].startswith("Track") for item in answer["items"])
    assert sum(block_of(i) == 0 for i in ids) >= 3  # the support's cluster is what the fold-in found
    table = run("recommend", str(implicit_run), "--item", "i1", "--item", "nope", "--k", "3")
    assert table.exit_code == 0 and "score" in table.output and "nope" in table.output  # reported, not fatal


def test_recommend_refuses_ratings_for_an_implicit_model(implicit_run):
    result = run("recommend", str(implicit_run), "--rate", "i1:5")
    assert result.exit_code == 1 and "implicit feedback" in result.output and "--item" in result.output
    result = run("recommend", str(implicit_run), "--item", "nope")
    assert result.exit_code == 1 and "none of the given items is known" in result.output


@pytest.mark.parametrize("flags, named", [
    (["--model", "neural-cf"], "--model"), (["--preset", "ml-1m"], "--preset"), (["--resume"], "--resume"),
    (["--device", "cuda"], "--device"), (["--algorithm", "reptile"], "--algorithm"),
])
def test_flags_that_do_not_apply_are_refused(tables, tmp_path, flags, named):
    result = run("train", "--feedback", "implicit", *tables, *flags, "--out", str(tmp_path / "run"))
    assert result.exit_code != 0 and named in result.output and "--feedback implicit" in result.output
    assert not (tmp_path / "run").exists()


def test_bad_feedback_values_and_thresholds_are_refused(tables, tmp_path):
    result = run("train", "--feedback", "plays", *tables, "--out", str(tmp_path / "a"))
    assert result.exit_code != 0 and "--feedback" in result.output
    result = run("train", "--positive-threshold", "4", *tables, "--out", str(tmp_path / "b"))
    assert result.exit_code != 0 and "--positive-threshold" in result.output
    config = tmp_path / "run.toml"
    config.write_text("[train]\nepochs = 3\n")
    result = run("train", "--feedback", "implicit", *tables, "--config", str(config), "--out", str(tmp_path / "c"))
    assert result.exit_code == 1 and "['train']" in result.output
    config.write_text("[implicit]\nepoch = 3\n")
    result = run("train", "--feedback", "implicit", *tables, "--config", str(config), "--out", str(tmp_path / "d"))
    assert result.exit_code == 1 and "[implicit]" in result.output and "epoch" in result.output


def test_the_positive_threshold_keeps_the_rows_at_or_above_it(tables):
    folder = Path(tables[1]).parent
    config = dict(dataset=str(folder / "plays.csv"), columns={"user": "listener", "item": "track", "rating": "plays"})
    explicit = load_data(DataConfig(**config))
    positives = load_data(DataConfig(**config, feedback="implicit", positive_threshold=4))
    assert positives.meta["feedback"] == "implicit" and (positives.ratings["rating"] == 1).all()
    assert len(positives.ratings) == int((explicit.ratings["rating"] >= 4).sum())
    assert positives.item_vocab == explicit.item_vocab  # indices stay valid
    with pytest.raises(ConfigError, match="positive_threshold"):
        DataConfig(**config, positive_threshold=4)
    assert "feedback" not in RunConfig().to_dict()["data"]  # an explicit run's config.toml is unchanged
