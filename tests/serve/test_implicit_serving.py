"""Serving a model trained on implicit feedback: a user is the items they liked (no ratings), answers are
ranking scores, ratings bodies are refused (and items-only bodies for a rating model), the onboarding
page asks "know / like", and a saved folder says feedback = implicit."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from implicit_tables import block_of, write_play_tables

from metarec.errors import DataError
from metarec.eval.implicit.train_run import train_implicit_run, write_implicit_run
from metarec.meta.run import DataConfig
from metarec.serve import ColdStartRecommender, create_app
from metarec.serve.batch import recommend_file

SUPPORT = ["i1", "i2", "i5"]  # cluster 0's block


@pytest.fixture(scope="module")
def implicit_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plays")
    write_play_tables(folder)
    data = DataConfig(dataset=str(folder / "plays.csv"), users=str(folder / "listeners.csv"),
                      items=str(folder / "tracks.csv"), feedback="implicit",
                      columns={"user": "listener", "item": "track", "rating": "plays", "timestamp": "when"})
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train_implicit_run(data, overrides={"implicit": {"epochs": 2}})
    finally:
        torch.set_num_threads(previous)
    return write_implicit_run(run, tmp_path_factory.mktemp("implicit") / "run")


@pytest.fixture(scope="module")
def implicit_rec(implicit_dir) -> ColdStartRecommender:
    return ColdStartRecommender.load(implicit_dir, replicas=2)


@pytest.fixture(scope="module")
def client(implicit_rec):
    with TestClient(create_app(implicit_rec)) as c:
        yield c


def _ids(answer: dict) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def test_an_implicit_user_gets_k_items_outside_their_support(client, implicit_rec):
    assert implicit_rec.feedback == "implicit" and client.get("/v1/model").json()["feedback"] == "implicit"
    r = client.post("/v1/recommend", json={"items": SUPPORT, "k": 7})
    assert r.status_code == 200, r.text
    ids = _ids(r.json())
    assert len(ids) == 7 and not set(ids) & set(SUPPORT) and r.json()["unknown_item_ids"] == []
    assert all(isinstance(i["score"], float) and "predicted_rating" not in i for i in r.json()["items"])
    assert sum(block_of(i) == 0 for i in ids) >= 4  # ranked from the positives' cluster
    again = client.post("/v1/recommend", json={"items": SUPPORT, "confidence": [1, 1, 1], "k": 7}).json()
    assert _ids(again) == ids  # confidence 1 each is the default
    unbatched = TestClient(create_app(implicit_rec, batching=False))
    assert _ids(unbatched.post("/v1/recommend", json={"items": SUPPORT, "k": 7}).json()) == ids
    batch = client.post("/v1/recommend/batch", json={"users": [{"items": SUPPORT, "k": 7}, {"items": ["i45"], "k": 3}]})
    assert batch.status_code == 200 and _ids(batch.json()["results"][0]) == ids
    predict = client.post("/v1/predict", json={"items": SUPPORT, "item_ids": ids[:2]})
    assert predict.status_code == 200 and [p["item_id"] for p in predict.json()["predictions"]] == ids[:2]


def test_ratings_are_refused_for_an_implicit_model(client):
    r = client.post("/v1/recommend", json={"ratings": [{"item_id": "i1", "rating": 5}], "k": 3})
    assert r.status_code == 422
    refused = [d for d in r.json()["detail"] if d["loc"] == ["body", "ratings"]]
    assert refused and "implicit feedback" in refused[0]["msg"] and "items" in refused[0]["msg"]
    r = client.post("/v1/recommend", json={"items": ["i1"], "confidence": [1, 2]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "confidence"]
    r = client.post("/v1/recommend", json={"items": ["i1"], "confidence": [-1]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "confidence", 0]
    r = client.post("/v1/recommend", json={"items": ["i1", "i1"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items"]


def test_unknown_ids_behave_as_for_ratings(client):
    r = client.post("/v1/recommend", json={"items": ["i1", "no-such-item"], "k": 3})
    assert r.status_code == 200 and r.json()["unknown_item_ids"] == ["no-such-item"]
    r = client.post("/v1/recommend", json={"items": ["no-such-item"], "k": 3})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"loc": ["body", "items"], "msg": "none of the given items is known: ['no-such-item']",
                                   "type": "unknown_item_id"}]


def test_a_rating_model_refuses_an_items_only_body(recommender, popular_ids):
    with TestClient(create_app(recommender)) as explicit:
        r = explicit.post("/v1/recommend", json={"items": popular_ids[:3], "k": 3})
        assert r.status_code == 422
        refused = [d for d in r.json()["detail"] if d["loc"] == ["body", "items"]]
        assert refused and "trained on ratings" in refused[0]["msg"]
        schema = explicit.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]
        assert "ratings" in schema["properties"] and "items" not in schema["properties"]  # its schema as before
        assert explicit.get("/v1/model").json()["feedback"] == "explicit"


def test_the_schema_of_an_implicit_model_asks_for_items(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]
    assert {"items", "confidence"} <= set(schema["properties"]) and "ratings" not in schema["properties"]
    assert schema["required"] == ["items"]


def test_the_onboarding_page_asks_know_or_like(client):
    r = client.get("/onboarding")
    page = r.text
    assert r.status_code == 200 and "Which of these do you know or like?" in page and "know / like it" in page
    assert "predicted rating" not in page and "What have you seen?" not in page
    script = re.findall(r"<script>(.*?)</script>", page, flags=re.S)[0]
    assert "IMPLICIT = true" in script
    body = re.search(r'api\("POST", "v1/recommend", (\{[^}]*\})\)', script).group(1)
    keys = {part.split(":")[0].strip() for part in body.strip("{}").split(",")}
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]
    assert "items" in keys and keys <= set(schema["properties"])
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in r.headers["content-security-policy"]
    # what the script does: first round, next round with the known items, then the top 10 from them
    first = client.get("/v1/onboarding?n=10").json()["items"]
    shown = [i["item_id"] for i in first]
    liked = shown[:2]
    second = client.post("/v1/onboarding", json={"n": 10, "shown": shown, "rated": liked}).json()["items"]
    assert not {i["item_id"] for i in second} & set(shown)
    top = client.post("/v1/recommend", json={"items": liked, "k": 10, "exclude_rated": True})
    assert top.status_code == 200 and len(top.json()["items"]) == 10 and not set(_ids(top.json())) & set(liked)


def test_a_saved_implicit_model_says_so(implicit_rec, tmp_path):
    folder = implicit_rec.save(tmp_path / "rec")
    assert json.loads((folder / "recommender.json").read_text())["feedback"] == "implicit"
    assert "implicit feedback" in (folder / "MODEL_CARD.md").read_text()
    loaded = ColdStartRecommender.load(folder)
    assert loaded.feedback == "implicit"
    assert loaded.recommend(SUPPORT, k=5)["item_id"].tolist() == implicit_rec.recommend(SUPPORT, k=5)["item_id"].tolist()


def test_a_batch_file_of_implicit_users(implicit_rec, tmp_path):
    lines = tmp_path / "users.jsonl"
    lines.write_text('{"items": ["i1", "i2"], "k": 3, "user_id": "a"}\n{"items": ["i45"], "confidence": [1], "k": 2}\n')
    table = recommend_file(implicit_rec, lines)
    assert table.groupby("user_id").size().to_dict() == {"a": 3, "2": 2}
    lines.write_text('{"ratings": [{"item_id": "i1", "rating": 1}]}\n')
    with pytest.raises(DataError, match="field 'ratings'.*implicit feedback"):
        recommend_file(implicit_rec, lines)


def test_new_items_join_but_ratings_are_not_folded_into_them(implicit_dir):
    fresh = ColdStartRecommender.load(implicit_dir, replicas=1)  # adding an item changes the catalogue
    with TestClient(create_app(fresh)) as c:
        added = c.post("/v1/items", json={"item_id": "new-1", "attributes": {"title": "New", "block": "b0"}})
        assert added.status_code == 201, added.text
        top = c.post("/v1/recommend", json={"items": SUPPORT, "k": 60})
        assert top.status_code == 200 and "new-1" in _ids(top.json())
        body = {"raters": [{"ratings": [{"item_id": "i1", "rating": 1}], "rating": 1}]}
        r = c.post("/v1/items/new-1/ratings", json=body)
        assert r.status_code == 409 and "implicit feedback" in r.json()["detail"]


def test_served_new_items_take_the_order_chosen_in_training(implicit_dir):
    """The checkpoint keeps the new-item order's weight chosen on validation users; serving re-orders a user's
    new items exactly as the benchmark's method does, and leaves every known item's score alone."""
    from dataclasses import replace

    import numpy as np

    from metarec.meta.checkpoint import load_checkpoint
    from metarec.serve.personalizer import Personalizer

    checkpoint = load_checkpoint(implicit_dir / "best")
    assert "content_weight" in checkpoint.state["new_item_order"]
    state = dict(checkpoint.state)
    plain = Personalizer(replace(checkpoint, state={**state, "new_item_order": {"content_weight": 0.0}}))
    assert plain.new_item_order is None
    served = Personalizer(replace(load_checkpoint(implicit_dir / "best"),
                                  state={**state, "new_item_order": {"content_weight": 1e6}}))
    order = served.new_item_order
    assert order is not None and order.new_items.any() and not order.new_items.all()
    user, alone = served.adapt(SUPPORT), plain.adapt(SUPPORT)
    scores = user.catalogue_score_tensor()[0].numpy()
    model = alone.catalogue_score_tensor()[0].numpy()
    expected = order.apply(model[None], np.array([0, len(user.rated_idx)]), user.rated_idx)[0]
    assert np.array_equal(scores, expected)
    assert np.array_equal(scores[~order.new_items], model[~order.new_items])
    assert np.array_equal(np.sort(scores[order.new_items]), np.sort(model[order.new_items]))
    similarity = order.similarity(np.array([0, len(user.rated_idx)]), user.rated_idx)[0][order.new_items]
    assert np.array_equal(np.argsort(scores[order.new_items], kind="stable"),
                          np.lexsort((model[order.new_items], similarity)))  # by similarity, ties by the model
    top = [item for item, _ in user.recommend(10)]
    assert top == [served.item_vocab.ids[i] for i in np.argsort(-np.where(np.isin(np.arange(len(scores)),
                                                                                      user.rated_idx), -np.inf, scores),
                                                                      kind="stable")[:10]]


def test_replicas_share_one_new_item_order(implicit_dir):
    from dataclasses import replace

    from metarec.meta.checkpoint import load_checkpoint
    from metarec.serve.replicas import personalizer_pool

    checkpoint = load_checkpoint(implicit_dir / "best")
    checkpoint = replace(checkpoint, state={**checkpoint.state, "new_item_order": {"content_weight": 1.0}})
    pool, make, _ = personalizer_pool(checkpoint, 2)
    with pool.borrow() as first, pool.borrow() as second:
        assert first is not second and first.new_item_order is not None
        assert second.new_item_order is first.new_item_order and make().new_item_order is first.new_item_order


@pytest.mark.parametrize("weight", [1.0, 1e6])
def test_an_approximate_top_k_re_orders_new_items_as_the_exact_one(implicit_dir, weight):
    """The approximate top-k scores every new item beside its index and re-orders them as the exact top-k
    does: the same items with the same scores (a small catalogue: the index finds every known item). The
    tables' new items share their block's attributes, which the model already follows, so the order here
    is over random attribute vectors: it changes every list."""
    pytest.importorskip("faiss")
    from dataclasses import replace

    import numpy as np
    import scipy.sparse as sp

    from metarec.meta.checkpoint import load_checkpoint
    from metarec.models.new_item_order import NewItemOrder
    from metarec.serve.replicas import personalizer_pool
    from metarec.serve.topk import HNSWConfig

    checkpoint = load_checkpoint(implicit_dir / "best")
    checkpoint = replace(checkpoint, state={**checkpoint.state, "new_item_order": {"content_weight": weight}})
    exact_pool, _, _ = personalizer_pool(checkpoint, 1)
    approx_pool, _, ranker = personalizer_pool(checkpoint, 1, top_k="approximate", hnsw=HNSWConfig(build_threads=1))
    assert ranker.describe()["mode"] == "approximate"
    with exact_pool.borrow() as exact, approx_pool.borrow() as approx:
        trained = approx.new_item_order
        assert trained is not None and trained.new_items.any()
        n = len(approx.item_vocab)
        attributes = np.random.default_rng(0).random((n, 6))
        order = NewItemOrder(sp.csr_matrix(attributes / np.linalg.norm(attributes, axis=1, keepdims=True)),
                             trained.new_items, weight)
        exact.new_item_order = approx.new_item_order = order
        for support in (SUPPORT, ["i7"], ["i1", "i30", "i44"]):
            want, got = exact.adapt(support), approx.adapt(support)
            scores = got.catalogue_score_tensor()[0].numpy()
            model = approx.model_scores(got.params, got.task)[0].numpy()
            assert not np.array_equal(scores[order.new_items], model[order.new_items])  # the order matters here
            for k in (10, n - len(support)):  # a short list, and every item but the support
                want_list, got_list = want.recommend(k), got.recommend(k)
                assert [i for i, _ in got_list] == [i for i, _ in want_list], (support, k)
                np.testing.assert_allclose([s for _, s in got_list], [s for _, s in want_list], rtol=1e-5, atol=1e-6)
