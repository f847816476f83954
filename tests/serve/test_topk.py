"""The catalogue top-k (metarec.serve.topk): exact and approximate (faiss HNSW) agree on random item vectors
(recall@10 >= 0.9), never return an excluded item, answer in the same format, keep an index when a few
items change; the service and the CLI serve with ``top_k="approximate"``; a missing faiss is one line."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from metarec.cli import app as cli_app
from metarec.errors import ConfigError, MissingExtraError
from metarec.serve import ColdStartRecommender, create_app
from metarec.serve.topk import (ApproximateTopK, ExactTopK, HNSWConfig, LinearCatalogue, LinearUsers,
                                MemberMeanCatalogue, approximate_recall, top_of_row)

pytest.importorskip("faiss")
SMALL = HNSWConfig(m=16, ef_construction=64, ef_search=64, build_threads=1)  # fast to build, recall ~0.98 here


def _catalogue(n: int = 5000, width: int = 33, seed: int = 0) -> LinearCatalogue:
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, width, generator=g) * 0.3
    vectors[:, -1] *= 0.5  # the bias column
    return LinearCatalogue(vectors, scale=None)


def _users(catalogue: LinearCatalogue, n: int, seed: int = 1) -> list[LinearUsers]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, catalogue.vectors.shape[1] - 1, generator=g) * 0.3
    c = torch.randn(n, generator=g)
    return [LinearUsers(catalogue, w[i:i + 1], c[i:i + 1]) for i in range(n)]


@pytest.fixture(scope="module")
def random_index() -> tuple[LinearCatalogue, ApproximateTopK]:
    catalogue = _catalogue()
    return catalogue, ApproximateTopK(catalogue, SMALL)


def test_approximate_recall_at_10_on_random_vectors(random_index):
    catalogue, approx = random_index
    assert approx.n_indexed == 5000 and approx.memory_bytes > 5000 * 33 * 4
    recall = approximate_recall(ExactTopK(), approx, _users(catalogue, 200), k=10)
    assert 0.9 <= recall <= 1.0


def test_both_skip_excluded_items_and_answer_alike(random_index):
    catalogue, approx = random_index
    rng = np.random.default_rng(0)
    for user in _users(catalogue, 20, seed=2):
        best = top_of_row(user.catalogue_score_tensor()[0], 300)[0]
        excluded = np.concatenate([best[:200], rng.choice(5000, 50)])  # most of the best: the search widens
        exact, = ExactTopK().search(user, [10], [excluded])
        found, = approx.search(user, [10], [excluded])
        for idx, scores in (exact, found):
            assert idx.dtype == np.int64 and scores.dtype == np.float32 and len(idx) == len(scores) == 10
            assert not np.isin(idx, excluded).any() and len(set(idx.tolist())) == 10
            assert np.all(np.diff(scores) <= 0)
            want = catalogue.scores(user.w, user.c)[0].numpy()[idx]  # the model's exact scores, not the index's
            np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
        assert found[0].tolist() == exact[0].tolist() or len(set(found[0]) & set(exact[0])) >= 8


def test_an_ensembles_index_holds_the_members_side_by_side_and_ranks_their_mean():
    """MemberMeanCatalogue: the members' mean of clamped scores (as the exact top-k of an ensemble computes
    it); its index (vectors side by side, biases summed) finds that mean's best items. Scores mostly inside
    the scale, as a trained model's are (the index orders by the unclamped mean)."""
    members = tuple(LinearCatalogue(_catalogue(2000, width=17, seed=s).vectors, scale=(1.0, 5.0)) for s in (4, 5, 6))
    catalogue = MemberMeanCatalogue(members)
    assert catalogue.vectors.shape == (2000, 3 * 16 + 1) and len(catalogue) == 2000
    torch.testing.assert_close(catalogue.vectors[:, -1], sum(m.vectors[:, -1] for m in members))
    g = torch.Generator().manual_seed(7)
    ws = [torch.randn(20, 16, generator=g) * 0.3 for _ in members]
    cs = [torch.randn(20, generator=g) * 0.3 + 3 for _ in members]
    w, c = torch.cat(ws, dim=1), torch.stack(cs, dim=1)
    mean = torch.stack([m.scores(wm, cm) for m, wm, cm in zip(members, ws, cs)]).mean(0)
    torch.testing.assert_close(catalogue.scores(w, c), mean)
    rows = np.array([5, 1, 1999])
    torch.testing.assert_close(catalogue.scores(w, c, rows), mean[:, rows])
    approx = ApproximateTopK(catalogue, SMALL)
    users = [LinearUsers(catalogue, w[i:i + 1], c[i:i + 1]) for i in range(20)]
    assert approximate_recall(ExactTopK(), approx, users, k=10) >= 0.9
    (idx, scores), = approx.search(users[0], [10], [None])
    np.testing.assert_allclose(scores, mean[0].numpy()[idx], rtol=1e-5, atol=1e-6)  # rescored: the exact mean
    with pytest.raises(ValueError, match="same items"):
        MemberMeanCatalogue((members[0], LinearCatalogue(members[1].vectors[:10])))


def test_k_beyond_what_is_left_and_ties_in_catalogue_order():
    row = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.5])
    idx, scores = top_of_row(row, 3)
    assert idx.tolist() == [1, 2, 4] and scores.tolist() == [3.0, 3.0, 3.0]  # ties in catalogue order
    idx, _ = top_of_row(row, 10, np.array([2, 2, 4]))
    assert idx.tolist() == [1, 3, 0, 5]
    catalogue = _catalogue(50)
    user = _users(catalogue, 1)[0]
    approx = ApproximateTopK(catalogue, SMALL)
    got, = approx.search(user, [60], [np.arange(10)])
    want, = ExactTopK().search(user, [60], [np.arange(10)])
    assert got[0].tolist() == want[0].tolist()  # every item left, in the exact order


def test_a_few_new_or_changed_items_are_scored_beside_the_index(random_index):
    catalogue, approx = random_index
    user = _users(catalogue, 1, seed=3)[0]
    w = user.w[0]
    star = torch.cat([w / w.norm() * 10, torch.tensor([1.0])]).unsqueeze(0)  # better than any item for this user
    changed = catalogue.vectors.clone()
    changed[7] = star[0]
    grown = LinearCatalogue(torch.cat([changed, star * 2]))
    again = ApproximateTopK(grown, SMALL, previous=approx)
    assert again.index is approx.index and again.stale.tolist() == [7, 5000]
    idx, _ = again.search(LinearUsers(grown, user.w, user.c), [5], [None])[0]
    assert idx[:2].tolist() == [5000, 7]
    rebuilt = ApproximateTopK(LinearCatalogue(catalogue.vectors * 2), SMALL, previous=approx)  # every item changed
    assert rebuilt.index is not approx.index and not len(rebuilt.stale)


def test_settings_and_modes_are_checked():
    assert HNSWConfig.from_mapping({"m": "8", "ef_search": "20", "metric": "l2"}) == HNSWConfig(m=8, ef_search=20,
                                                                                                  metric="l2")
    for bad in ({"M": 8}, {"m": "many"}, {"ef_search": 0}, {"metric": "cosine"}):
        with pytest.raises(ConfigError):
            HNSWConfig.from_mapping(bad)
    with pytest.raises(ConfigError, match="exact, approximate"):
        ColdStartRecommender(top_k="fast")


def test_l2_metric_finds_the_same_kind_of_lists():
    catalogue = _catalogue(2000)
    approx = ApproximateTopK(catalogue, HNSWConfig(m=16, ef_construction=64, ef_search=128, metric="l2"))
    assert approximate_recall(ExactTopK(), approx, _users(catalogue, 50), k=10) >= 0.8


def _support(ids: list[str]) -> dict[str, float]:
    return {ids[0]: 5.0, ids[3]: 1.0, ids[7]: 4.0}


def test_the_service_serves_an_approximate_top_k(neural_cf_dir, popular_ids):
    exact = ColdStartRecommender.load(neural_cf_dir, replicas=1)
    support = _support(popular_ids)
    body = {"ratings": [{"item_id": i, "rating": r} for i, r in support.items()], "k": 7}
    want = {i["item_id"] for i in exact.recommend_records(support, k=7).items}
    for metric, batching in (("ip", True), ("l2", False)):
        approx = ColdStartRecommender.load(neural_cf_dir, replicas=1, top_k="approximate",
                                           hnsw=HNSWConfig(build_threads=1, metric=metric))
        with TestClient(create_app(approx, batching=batching)) as client:
            answer = client.post("/v1/recommend", json=body)
            assert answer.status_code == 200, answer.text
            items = answer.json()["items"]
            described = client.get("/v1/model").json()["top_k"]
        assert described["mode"] == "approximate" and described["items_indexed"] == approx.n_items
        assert 0 <= described["recall_at_10_estimate"] <= 1
        assert len(items) == 7 and not {i["item_id"] for i in items} & set(support)
        scores = exact.predict(support, [i["item_id"] for i in items])["score"].to_numpy()
        np.testing.assert_allclose([i["score"] for i in items], scores, rtol=1e-5)  # exact scores of what it found
        assert len({i["item_id"] for i in items} & want) >= 5  # a 1-epoch model: many items score alike
    assert exact.info()["top_k"] == {"mode": "exact"}


def test_worker_processes_load_with_the_same_top_k(monkeypatch, neural_cf_dir):
    from metarec.serve.app import ENV_DIR, ENV_OPTIONS, app_from_env

    monkeypatch.setenv(ENV_DIR, str(neural_cf_dir))  # what `metarec serve --workers N --top-k approximate` sets
    monkeypatch.setenv(ENV_OPTIONS, json.dumps({"batching": False, "top_k": "approximate",
                                                "hnsw": dataclasses.asdict(SMALL)}))
    with TestClient(app_from_env()) as client:
        described = client.get("/v1/model").json()["top_k"]
    assert described["mode"] == "approximate" and described["m"] == SMALL.m


def test_a_model_without_item_vectors_ranks_exactly(recommender, popular_ids, caplog):
    with caplog.at_level("WARNING", logger="metarec.serve.topk"):
        rec = ColdStartRecommender(recommender.checkpoint, replicas=1, top_k="approximate")
    assert rec.info()["top_k"]["mode"] == "exact" and "not linear" in rec.info()["top_k"]["reason"]
    assert "ranking exactly" in caplog.text
    got, want = (r.recommend_records(_support(popular_ids), k=5).items for r in (rec, recommender))
    assert [(i["item_id"], i["score"]) for i in got] == [(i["item_id"], i["score"]) for i in want]


def test_the_cli_flag(neural_cf_dir, popular_ids):
    args = ["recommend", str(neural_cf_dir), *[f"--rate={i}:{r}" for i, r in _support(popular_ids).items()],
            "--k", "4", "--json"]
    result = CliRunner().invoke(cli_app, [*args, "--top-k", "approximate", "--hnsw", "m=16", "--hnsw", "ef_search=64"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(cli_app, [*args, "--top-k", "approximate", "--hnsw", "efs=64"])
    assert bad.exit_code == 1 and "unknown HNSW setting" in bad.output


def test_without_faiss_one_line_names_the_extra(monkeypatch, neural_cf_dir, popular_ids):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'metarec\[ann\]'"):
        ColdStartRecommender.load(neural_cf_dir, top_k="approximate")
    result = CliRunner().invoke(cli_app, ["recommend", str(neural_cf_dir), "--rate", f"{popular_ids[0]}:5",
                                          "--top-k", "approximate"])
    assert result.exit_code == 1 and "metarec[ann]" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert ColdStartRecommender.load(neural_cf_dir, replicas=1).info()["top_k"] == {"mode": "exact"}  # exact needs none
