"""``metarec train --feedback implicit`` through the CLI: a run folder that loads as any other (config,
metrics, checkpoint, model card), ``metarec recommend --item`` on it, and the flags that do not apply refused."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch
from implicit_tables import block_of, write_play_tables
from typer.testing import CliRunner

from metarec.cli import app
from metarec.data.loaders.registry import load_data
from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.learner import MetaLearner
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
    assert set(saved["train"]) <= {"seed", "device", "threads", "members"}  # the schedule is [implicit]'s
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
    (["--model", "neural-cf"], "--model"), (["--preset", "ml-1m"], "--preset"),
    (["--device", "cuda"], "--device"), (["--algorithm", "reptile"], "--algorithm"),
])
def test_flags_that_do_not_apply_are_refused(tables, tmp_path, flags, named):
    result = run("train", "--feedback", "implicit", *tables, *flags, "--out", str(tmp_path / "run"))
    assert result.exit_code != 0 and named in result.output and "--feedback implicit" in result.output
    assert not (tmp_path / "run").exists()


def test_evaluate_ranks_the_catalogue_for_the_runs_test_users(implicit_run):
    """``metarec evaluate`` of an implicit run: the benchmark's ranking metrics per scenario and K on the run's own
    split. A user's positives all lie in their cluster's block of 20 of the 60 items, so a model that learned
    the clusters finds far more of the held-out positives in its top 20 than a random order would."""
    result = run("evaluate", str(implicit_run), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores) == {"new_users"}  # every item is warm here: no new-item scenario
    points = scores["new_users"]
    assert set(points) == {"all", "k1", "k3", "k5"}  # supports of 4-8 positives: none is cut to 10
    assert points["k5"]["tasks"] < points["k1"]["tasks"] == points["all"]["tasks"]  # fewer than 5: left out at K = 5
    for row in points.values():
        assert row["tasks"] > 0 and all(0.0 <= row[m] <= 1.0 for m in ("recall@20", "ndcg@20", "mrr", "hit@10"))
        assert row["recall@10"] <= row["recall@20"] and row["hit@10"] <= row["hit@20"]
    assert points["all"]["recall@20"] > 0.9 and points["k1"]["recall@20"] > 0.9  # a random order: 0.34-0.37
    table = run("evaluate", str(implicit_run))
    assert table.exit_code == 0 and "nDCG@20" in table.output and "K = 3" in table.output
    refused = run("evaluate", str(implicit_run), "--steps", "2")
    assert refused.exit_code == 1 and "closed-form" in refused.output


class Killed(Exception):
    """What the test's dying meta-step raises: the process killed mid-epoch."""


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_runs_model(tables, implicit_run, tmp_path, monkeypatch):
    """Killed in the middle of its second epoch (after the first epoch's checkpoint), the run continued by
    ``--resume`` ends exactly where the fixture's run, never stopped (same tables, --epochs 2 --seed 1), ended."""
    out = tmp_path / "run"
    step, after_checkpoint = MetaLearner.meta_step, []

    def dying_step(self, *args, **kwargs):
        if (out / "last").is_dir():  # epoch 0 is saved: die on the second meta-batch of epoch 1
            after_checkpoint.append(1)
            if len(after_checkpoint) == 2:
                raise Killed
        return step(self, *args, **kwargs)

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture's run
    try:
        monkeypatch.setattr(MetaLearner, "meta_step", dying_step)
        with pytest.raises(Killed):
            run("train", "--feedback", "implicit", *tables, "--epochs", "2", "--seed", "1", "--out", str(out))
        monkeypatch.setattr(MetaLearner, "meta_step", step)
        assert load_checkpoint(out / "last").state["epoch"] == 1 and not (out / "MODEL_CARD.md").exists()
        refused = run("train", "--feedback", "implicit", "--resume", "--epochs", "3", "--out", str(out))
        assert refused.exit_code == 1 and "--epochs" in refused.output  # a resumed run keeps its settings
        result = run("train", "--feedback", "implicit", "--resume", "--out", str(out))
    finally:
        torch.set_num_threads(previous)
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.output and (out / "MODEL_CARD.md").exists()

    def records(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert records(out) == records(implicit_run) and [r["epoch"] for r in records(out)] == [0, 1]
    resumed, uninterrupted = load_checkpoint(out / "best"), load_checkpoint(implicit_run / "best")
    for name, value in uninterrupted.learner.named_meta_parameters().items():
        assert torch.equal(resumed.learner.named_meta_parameters()[name], value), name
    assert resumed.state == uninterrupted.state


def test_resume_needs_a_run_to_continue_on_its_own_split_and_data(implicit_run, tmp_path):
    result = run("train", "--feedback", "implicit", "--resume", "--out", str(tmp_path / "none"))
    assert result.exit_code == 1 and "no run to resume" in result.output
    # a config.toml whose split is not the one this version builds for the run: not the same run
    shutil.copytree(implicit_run, tmp_path / "split")
    config = (tmp_path / "split" / "config.toml").read_text()
    assert config.count("\nquery_size = 10\n") == 1
    (tmp_path / "split" / "config.toml").write_text(config.replace("\nquery_size = 10\n", "\nquery_size = 8\n"))
    result = run("train", "--feedback", "implicit", "--resume", "--out", str(tmp_path / "split"))
    assert result.exit_code == 1 and "differs" in result.output and "'split'" in result.output
    # the table it was trained on has changed since: its sizes, recorded in last/, no longer match
    saved = RunConfig.from_toml(implicit_run / "config.toml")
    plays = pd.read_csv(saved.data.dataset)
    plays.iloc[: len(plays) - 50].to_csv(tmp_path / "fewer.csv", index=False)
    shutil.copytree(implicit_run, tmp_path / "data")
    config = (tmp_path / "data" / "config.toml").read_text()
    (tmp_path / "data" / "config.toml").write_text(config.replace(str(saved.data.dataset), str(tmp_path / "fewer.csv")))
    result = run("train", "--feedback", "implicit", "--resume", "--out", str(tmp_path / "data"))
    assert result.exit_code == 1 and "the data differ" in result.output


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
