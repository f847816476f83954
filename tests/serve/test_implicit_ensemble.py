"""An implicit-feedback ensemble (``metarec train --feedback implicit --members 3``): the model served is the
implicit benchmark's ``meta-ensemble`` (the same members, the same content weight for new items, the same
scores), serving ranks by the members' mean, and a resumed run trains only the members it lacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from implicit_tables import write_play_tables
from typer.testing import CliRunner

from metarec.cli import app
from metarec.eval.implicit.config import ImplicitBenchmarkConfig
from metarec.eval.implicit.ensemble_method import ImplicitEnsembleMethod
from metarec.eval.implicit.evaluate import checkpoint_scorer
from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.ensemble import load_members, member_checkpoint_dirs
from metarec.meta.run import RunConfig
from metarec.serve.bundle import read_run
from metarec.serve.recommender import ColdStartRecommender

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("implicit-ensemble")
    out = root / "run"
    result = run("train", "--feedback", "implicit", *write_play_tables(root / "plays"), "--epochs", "2", "--seed", "1",
                 "--members", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "an ensemble of 3" in result.output
    return out


def test_the_served_ensemble_is_the_benchmarks(ensemble_run):
    split, first = read_run(ensemble_run)
    members = load_members(ensemble_run, first)
    assert len(members) == 2 and RunConfig.from_toml(ensemble_run / "config.toml").train.members == 3
    benchmark = ImplicitEnsembleMethod(ImplicitBenchmarkConfig(), 3, {"implicit": {"epochs": 2}})
    benchmark.fit(split, 1)
    assert first.state["new_item_order"]["content_weight"] == benchmark.content_weight
    assert first.state["ensemble_members"] == 3
    for scenario in ("new_users", "new_users_new_items"):
        tasks = split.test[scenario]
        np.testing.assert_allclose(checkpoint_scorer(first, members)(tasks), benchmark.score(tasks), rtol=0, atol=1e-5)
    alone = checkpoint_scorer(first)(split.test["new_users"])
    assert not np.allclose(alone, benchmark.score(split.test["new_users"]), atol=1e-4)  # the members count


def test_serving_ranks_by_the_members_mean(ensemble_run):
    rec = ColdStartRecommender.load(ensemble_run)
    assert rec.info()["ensemble_members"] == 3 and rec.feedback == "implicit"
    singles = [ColdStartRecommender.load(d) for d in (ensemble_run / "best", *member_checkpoint_dirs(ensemble_run))]
    liked = ["i0", "i3", "i7"]
    asked = [f"i{j}" for j in range(10, 40)]
    own = np.mean([s.predict(liked, asked)["score"].to_numpy() for s in singles], axis=0)
    np.testing.assert_allclose(rec.predict(liked, asked)["score"].to_numpy(), own, rtol=0, atol=1e-5)
    every = rec.predict(liked, list(rec.items.index))  # the whole catalogue: new items in the ensemble's order
    scores = dict(zip(every["item_id"], every["score"]))
    top = rec.recommend(liked, k=8)
    assert not set(top["item_id"]) & set(liked)
    np.testing.assert_allclose(top["score"].to_numpy(), [scores[i] for i in top["item_id"]], rtol=0, atol=1e-6)
    assert list(top["score"]) == sorted(top["score"], reverse=True)


def test_evaluate_and_resume(ensemble_run, tmp_path):
    result = run("evaluate", str(ensemble_run), "--json")
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.output)["new_users"]["all"]["ndcg@20"] <= 1
    out = tmp_path / "run"
    shutil.copytree(ensemble_run, out)
    shutil.rmtree(out / "members" / "2")
    kept = (out / "members" / "1" / "best" / "model.safetensors").stat().st_mtime_ns
    result = run("train", "--feedback", "implicit", "--out", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "members" / "1" / "best" / "model.safetensors").stat().st_mtime_ns == kept
    assert ((out / "members" / "2" / "best" / "model.safetensors").read_bytes()
            == (ensemble_run / "members" / "2" / "best" / "model.safetensors").read_bytes())
    assert load_checkpoint(out / "best").state["new_item_order"] == load_checkpoint(ensemble_run / "best").state["new_item_order"]
