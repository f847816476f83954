"""An ensemble of meta-learners end to end (``metarec train --members 3``): its members in the run folder,
``metarec evaluate``, the Python API, a saved folder and the HTTP service all score a user by the members'
mean, each member adapted on its own; what an ensemble cannot do is refused with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import ConfigError, MetarecError
from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.ensemble import MEMBER_SEED_STRIDE, member_config, member_checkpoint_dirs
from metarec.meta.run import RunConfig
from metarec.serve import create_app
from metarec.serve.recommender import ColdStartRecommender, RecommendQuery

runner = CliRunner()
FAST = ["--dataset", "synthetic", "--model", "neural-cf", "--epochs", "2", "--patience", "50"]


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ensemble") / "run"
    result = run("train", *FAST, "--members", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "ensemble of 3 meta-learners" in result.output
    return out


@pytest.fixture(scope="module")
def singles(ensemble_run) -> list[ColdStartRecommender]:
    """Each member served alone (its checkpoint folder: no members)."""
    folders = [ensemble_run / "best", *member_checkpoint_dirs(ensemble_run)]
    return [ColdStartRecommender.load(folder) for folder in folders]


@pytest.fixture(scope="module")
def rec(ensemble_run) -> ColdStartRecommender:
    return ColdStartRecommender.load(ensemble_run)


def test_member_configurations_differ_only_by_seed():
    config = RunConfig.preset("neural-cf").override("train", seed=7, members=3)
    member = member_config(config, 2)
    assert member.train.seed == 7 + 2 * MEMBER_SEED_STRIDE and member.train.members == 1
    assert member.override("train", seed=7, members=3) == config
    with pytest.raises(ValueError):
        member_config(config, 0)
    for bad in (0, 17):
        with pytest.raises(ConfigError, match="members"):
            config.override("train", members=bad)


def test_members_are_run_folders_trained_from_their_own_seeds(ensemble_run):
    assert [p.parent.name for p in member_checkpoint_dirs(ensemble_run)] == ["1", "2"]
    for m in (1, 2):
        config = RunConfig.from_toml(ensemble_run / "members" / str(m) / "config.toml")
        assert config.train.seed == m * MEMBER_SEED_STRIDE and config.train.members == 1
    assert RunConfig.from_toml(ensemble_run / "config.toml").train.members == 3
    assert "**Ensemble:** 3 meta-learners" in (ensemble_run / "MODEL_CARD.md").read_text()
    weights = [load_checkpoint(d).learner.model.state_dict() for d in (ensemble_run / "best", *member_checkpoint_dirs(ensemble_run))]
    name = next(n for n, v in weights[0].items() if v.is_floating_point() and v.numel() > 10)
    assert not any(np.allclose(weights[0][name].numpy(), w[name].numpy()) for w in weights[1:])


def test_the_api_scores_a_user_by_the_members_mean(rec, singles):
    assert rec.info()["ensemble_members"] == 3 and "+e3." in rec.model_version
    ids = list(rec.items.index)
    ratings = {ids[0]: 5.0, ids[3]: 2.0, ids[8]: 4.0}
    asked = ids[10:30]
    own = np.mean([s.predict(ratings, asked)["score"].to_numpy() for s in singles], axis=0)
    np.testing.assert_allclose(rec.predict(ratings, asked)["score"].to_numpy(), own, rtol=0, atol=1e-5)
    # the whole catalogue ranked by that mean, rated items left out
    every = np.mean([s.predict(ratings, ids)["score"].to_numpy() for s in singles], axis=0)
    top = rec.recommend(ratings, k=10)
    expected = [ids[i] for i in np.argsort(-every, kind="stable") if ids[i] not in ratings][:10]
    assert list(top["item_id"])[:5] == expected[:5]
    np.testing.assert_allclose(top["score"].to_numpy(), np.sort(every[[ids.index(i) for i in top["item_id"]]])[::-1],
                               rtol=0, atol=1e-5)
    # several users adapted as one batch: the same answers as one by one
    other = {ids[2]: 1.0, ids[4]: 5.0}
    many = rec.recommend_many([RecommendQuery(ratings, k=5), RecommendQuery(other, k=5)])
    assert [r.items[0]["item_id"] for r in many] == [rec.recommend(ratings, k=5)["item_id"][0],
                                                      rec.recommend(other, k=5)["item_id"][0]]


def test_a_saved_ensemble_loads_with_its_members_and_serves_over_http(rec, tmp_path):
    saved = rec.save(tmp_path / "saved")
    assert sorted(p.name for p in (saved / "members").iterdir()) == ["1", "2"]
    again = ColdStartRecommender.load(saved)
    assert again.info()["ensemble_members"] == 3 and again.model_version == ColdStartRecommender.load(saved).model_version
    ids = list(rec.items.index)
    ratings = {ids[1]: 4.0, ids[6]: 1.0}
    np.testing.assert_allclose(again.predict(ratings, ids[:20])["score"], rec.predict(ratings, ids[:20])["score"],
                               rtol=0, atol=1e-6)
    with TestClient(create_app(again)) as client:
        body = {"ratings": [{"item_id": i, "rating": r} for i, r in ratings.items()], "k": 5}
        answer = client.post("/v1/recommend", json=body)
        assert answer.status_code == 200, answer.text
        assert [x["item_id"] for x in answer.json()["items"]] == list(again.recommend(ratings, k=5)["item_id"])
        assert client.get("/v1/model").json()["ensemble_members"] == 3


def test_a_new_item_joins_every_member(ensemble_run, singles):
    rec = ColdStartRecommender.load(ensemble_run)
    attributes = {k: v for k, v in rec.item(rec.items.index[0]).items() if k in ("category", "tags", "year")}
    rec.add_item("brand-new", attributes)
    for single in singles:
        single.add_item("brand-new", attributes)
    ratings = {rec.items.index[0]: 5.0, rec.items.index[5]: 3.0}
    own = np.mean([s.predict(ratings, ["brand-new"])["score"].to_numpy() for s in singles], axis=0)
    np.testing.assert_allclose(rec.predict(ratings, ["brand-new"])["score"].to_numpy(), own, rtol=0, atol=1e-5)


def test_what_an_ensemble_cannot_do_is_refused(ensemble_run, rec):
    from metarec.serve.item_ratings import Rater

    rec = ColdStartRecommender.load(ensemble_run)
    rec.add_item("fresh", {})
    ids = list(rec.items.index)
    with pytest.raises(MetarecError, match="ensemble of 3"):
        rec.add_item_ratings("fresh", [Rater(rating=4.0, ratings={ids[0]: 5.0})])


def test_an_approximate_top_k_searches_the_members_vectors_side_by_side(ensemble_run, rec):
    """One index over every member's item vectors (MemberMeanCatalogue); what it finds is scored as the exact
    ensemble scores it, and the lists agree with the exact top-k's."""
    pytest.importorskip("faiss")
    from metarec.serve.topk import HNSWConfig

    approx = ColdStartRecommender.load(ensemble_run, top_k="approximate", hnsw=HNSWConfig(build_threads=1))
    assert approx.info()["top_k"]["mode"] == "approximate"
    ids = list(rec.items.index)
    overlap = []
    for u in range(8):
        ratings = {ids[(7 * u) % len(ids)]: 5.0, ids[(7 * u + 3) % len(ids)]: 2.0}
        want = rec.recommend(ratings, k=10)
        got = approx.recommend(ratings, k=10)
        assert not set(got["item_id"]) & set(ratings)
        exact_scores = rec.predict(ratings, list(got["item_id"]))["score"].to_numpy()
        np.testing.assert_allclose(got["score"].to_numpy(), exact_scores, rtol=1e-5, atol=1e-5)
        kth = want["score"].min()
        overlap.append(np.mean([i in set(want["item_id"]) or s >= kth - 1e-5 for i, s in zip(got["item_id"], got["score"])]))
    assert np.mean(overlap) >= 0.9, overlap
    assert approx.info()["top_k"]["items_indexed"] == approx.n_items
    approx.add_item("fresh", {})  # every member's vector of it, scored beside the index, not a rebuild
    assert approx.info()["top_k"]["items_scored_beside"] == 1
    ratings = {ids[0]: 5.0}
    got = approx.recommend(ratings, k=approx.n_items - 1)
    assert "fresh" in set(got["item_id"])
    fresh = got.loc[got["item_id"] == "fresh", "score"].to_numpy()
    np.testing.assert_allclose(fresh, approx.predict(ratings, ["fresh"])["score"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_evaluate_scores_test_users_by_the_members_mean(ensemble_run, singles):
    from metarec.meta.trainer import evaluate_run
    from metarec.meta.predict import predict_tasks
    from metarec.serve.bundle import read_run

    result = run("evaluate", str(ensemble_run), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    split, first = read_run(ensemble_run)
    tasks = split.test["new_users"]
    learners = [first.learner, *(load_checkpoint(d).learner for d in member_checkpoint_dirs(ensemble_run))]
    mean = np.mean([predict_tasks(learner, tasks) for learner in learners], axis=0)
    assert scores["new_users"]["mae"] == pytest.approx(float(np.abs(mean - tasks.query_rating).mean()), abs=1e-9)
    alone = evaluate_run(first, split)["new_users"]["mae"]
    assert scores["new_users"]["mae"] != pytest.approx(alone, abs=1e-6)  # the members count


def test_resume_trains_only_the_members_missing(ensemble_run, tmp_path):
    """A run killed while its members trained: --resume keeps the run and the finished members and trains
    the missing one again from its seed, to the same weights."""
    out = tmp_path / "run"
    shutil.copytree(ensemble_run, out)
    shutil.rmtree(out / "members" / "2")
    kept = (out / "members" / "1" / "best" / "model.safetensors").stat().st_mtime_ns
    result = run("train", "--out", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "members" / "1" / "best" / "model.safetensors").stat().st_mtime_ns == kept
    for name in ("best", "members/2/best"):
        assert ((out / name / "model.safetensors").read_bytes()
                == (ensemble_run / name / "model.safetensors").read_bytes()), name


def test_fit_with_members_trains_and_serves_an_ensemble(tmp_path):
    from metarec.data import load_dataset

    config = RunConfig.preset("neural-cf").override("train", epochs=1, threads=1, members=2)
    rec = ColdStartRecommender().fit(load_dataset("synthetic"), config=config, run_dir=tmp_path / "run")
    assert rec.info()["ensemble_members"] == 2 and "+e2." in rec.model_version
    assert [p.parent.name for p in member_checkpoint_dirs(tmp_path / "run")] == ["1"]
    ids = list(rec.items.index)
    ratings = {ids[0]: 4.0}
    singles = [ColdStartRecommender.load(d) for d in (tmp_path / "run" / "best", *member_checkpoint_dirs(tmp_path / "run"))]
    own = np.mean([s.predict(ratings, ids[:10])["score"].to_numpy() for s in singles], axis=0)
    np.testing.assert_allclose(rec.predict(ratings, ids[:10])["score"].to_numpy(), own, rtol=0, atol=1e-5)


def test_a_broken_ensemble_folder_is_refused_naming_what_is_wrong(ensemble_run, tmp_path):
    gap = tmp_path / "gap"
    shutil.copytree(ensemble_run, gap)
    shutil.rmtree(gap / "members" / "1")
    with pytest.raises(MetarecError, match=r"numbered 1, 2, \.\.\. without gaps, found \[2\]"):
        ColdStartRecommender.load(gap)
    empty = tmp_path / "empty"
    shutil.copytree(ensemble_run, empty)
    shutil.rmtree(empty / "members" / "2" / "best")
    shutil.rmtree(empty / "members" / "2" / "last")
    with pytest.raises(MetarecError, match="an ensemble member without a checkpoint"):
        ColdStartRecommender.load(empty)
    other = tmp_path / "other"  # a member of another architecture
    shutil.copytree(ensemble_run, other)
    shutil.rmtree(other / "members" / "2")
    result = run("train", "--dataset", "synthetic", "--model", "feature-mlp", "--epochs", "1",
                 "--out", str(other / "members" / "2"))
    assert result.exit_code == 0, result.output
    with pytest.raises(MetarecError, match="ensemble member 2 is another model than member 0"):
        ColdStartRecommender.load(other)
    result = run("train", *FAST, "--members", "0", "--out", str(tmp_path / "zero"))
    assert result.exit_code != 0 and "members must be in 1..16" in result.output
