"""The service's batch, item-vector, new-item, metrics and docs routes, through FastAPI's TestClient."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from metarec.serve import ColdStartRecommender, create_app

KEY = "test-key-catalogue"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def grown(neural_cf_dir) -> ColdStartRecommender:
    """A neural-cf recommender of its own: the tests add items to it."""
    return ColdStartRecommender.load(neural_cf_dir, replicas=1)


@pytest.fixture(scope="module")
def client(grown):
    with TestClient(create_app(grown, api_key=KEY, max_ratings=20, max_k=50, max_batch_users=4)) as c:
        yield c


def _user(ids: list[str], offset: int = 0, **extra) -> dict:
    return {"ratings": [{"item_id": ids[offset], "rating": 5}, {"item_id": ids[offset + 3], "rating": 2}], **extra}


def test_batch_answers_each_user_as_alone(client, popular_ids, serve_data):
    users = [_user(popular_ids, 0, k=5), _user(popular_ids, 4, k=3, user=serve_data.new_user(1)),
             _user(popular_ids, 8, k=4, exclude_rated=False)]
    r = client.post("/v1/recommend/batch", json={"users": users}, headers=HEADERS)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["items"]) for x in results] == [5, 3, 4]
    for body, got in zip(users, results):
        alone = client.post("/v1/recommend", json=body, headers=HEADERS).json()
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in alone["items"]]
        assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in alone["items"]], abs=1e-4)


def test_batch_422_names_the_user_and_field(client, popular_ids):
    bad_rating = _user(popular_ids)
    bad_rating["ratings"][1]["rating"] = 99
    r = client.post("/v1/recommend/batch", json={"users": [_user(popular_ids), bad_rating]}, headers=HEADERS)
    assert r.status_code == 422
    assert [d["loc"] for d in r.json()["detail"]] == [["body", "users", 1, "ratings", 1, "rating"]]
    unknown = {"ratings": [{"item_id": "no-such", "rating": 3}]}
    r = client.post("/v1/recommend/batch", json={"users": [unknown]}, headers=HEADERS)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "users", 0, "ratings"]
    r = client.post("/v1/recommend/batch", json={"users": [_user(popular_ids, k=0)]}, headers=HEADERS)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "users", 0, "k"]
    r = client.post("/v1/recommend/batch", json={"users": [_user(popular_ids)] * 5}, headers=HEADERS)  # bound: 4
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "users"]
    assert client.post("/v1/recommend/batch", json={"users": [_user(popular_ids)]}).status_code == 401


def test_similar_items(client, grown, serve_data):
    item_id = serve_data.item_id
    r = client.get(f"/v1/items/{item_id}/similar", params={"k": 5}, headers=HEADERS)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 5 and item_id not in {i["item_id"] for i in items}
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in scores)
    assert all(i.get("title") for i in items)
    vectors = grown.item_vectors().set_index("item_id")["vector"]
    a, b = vectors[item_id], vectors[items[0]["item_id"]]
    assert scores[0] == pytest.approx(float(a @ b / ((a @ a) ** 0.5 * (b @ b) ** 0.5)), abs=1e-5)
    missing = client.get("/v1/items/no-such-item/similar", headers=HEADERS)
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]
    assert client.get(f"/v1/items/{item_id}/similar", params={"k": 0}, headers=HEADERS).status_code == 422


def test_similar_items_need_item_vectors(recommender, serve_data):
    with TestClient(create_app(recommender, batching=False)) as c:  # feature-mlp: no item vectors
        r = c.get(f"/v1/items/{serve_data.item_id}/similar")
    assert r.status_code == 409 and "no item vectors" in r.json()["detail"]


def test_new_item_is_served_and_recommendable(client, grown, popular_ids, serve_data):
    columns = list(grown.items.columns)
    attributes = {"title": "A film released today"} if "title" in columns else {}
    multi = serve_data.multi_column
    attributes[multi] = list(grown.items[multi].dropna().iloc[0])[:2]
    body = {"item_id": "brand-new-1", "attributes": attributes}
    assert client.post("/v1/items", json=body).status_code == 401  # a write: the key is needed
    version = client.get("/healthz").json()["model_version"]
    r = client.post("/v1/items", json=body, headers=HEADERS)
    assert r.status_code == 201, r.text
    assert r.json()["item_id"] == "brand-new-1" and r.json()["seen_in_training"] is False
    shown = client.get("/v1/items/brand-new-1", headers=HEADERS)
    assert shown.status_code == 200 and shown.json()[multi] == attributes[multi]
    new_version = client.get("/healthz").json()["model_version"]
    assert new_version != version
    ratings = {"ratings": [{"item_id": popular_ids[0], "rating": 5}, {"item_id": popular_ids[2], "rating": 3}]}
    predicted = client.post("/v1/predict", json={**ratings, "item_ids": ["brand-new-1"]}, headers=HEADERS).json()
    assert predicted["unknown_item_ids"] == [] and predicted["model_version"] == new_version
    score = predicted["predictions"][0]["score"]
    everything = grown.recommend_records({popular_ids[0]: 5, popular_ids[2]: 3}, k=grown.n_items).items
    ranked = [i["item_id"] for i in everything]
    assert "brand-new-1" in ranked
    k = ranked.index("brand-new-1") + 1
    if k <= 50:  # the service's max_k
        top = client.post("/v1/recommend", json={**ratings, "k": k}, headers=HEADERS).json()["items"]
        assert top[-1]["item_id"] == "brand-new-1" and top[-1]["score"] == pytest.approx(score, abs=1e-4)
    similar = client.get("/v1/items/brand-new-1/similar", params={"k": 3}, headers=HEADERS)
    assert similar.status_code == 200 and len(similar.json()["items"]) == 3


def test_new_item_422s(client, serve_data):
    again = client.post("/v1/items", json={"item_id": serve_data.item_id}, headers=HEADERS)
    assert again.status_code == 422 and again.json()["detail"][0]["loc"] == ["body", "item_id"]
    typo = client.post("/v1/items", json={"item_id": "x-1", "attributes": {"colour": "red"}}, headers=HEADERS)
    assert typo.status_code == 422 and typo.json()["detail"][0]["loc"] == ["body", "attributes"]
    assert "colour" in typo.json()["detail"][0]["msg"]
    nested = client.post("/v1/items", json={"item_id": "x-2", "attributes": {"title": {"a": 1}}}, headers=HEADERS)
    assert nested.status_code == 422
    assert client.get("/v1/items/x-1", headers=HEADERS).status_code == 404  # nothing was added


def test_new_items_off_for_several_workers(recommender):
    with TestClient(create_app(recommender, item_writes=False)) as c:
        assert c.post("/v1/items", json={"item_id": "x"}).status_code == 409


def test_metrics(client, popular_ids):
    client.post("/v1/recommend", json=_user(popular_ids), headers=HEADERS)
    client.get("/v1/items/no-such-item", headers=HEADERS)
    assert client.get("/metrics").status_code == 401  # behind the key, like the /v1 routes
    r = client.get("/metrics", headers=HEADERS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert re.search(r'metarec_requests_total\{method="POST",route="/v1/recommend",status="200",worker="\d+"\} \d+', text)
    assert re.search(r'route="/v1/items/\{item_id\}",status="404"', text)  # the template, never the id
    assert "no-such-item" not in text
    assert re.search(r'metarec_request_duration_seconds_bucket\{route="/v1/recommend",le="\+Inf",worker="\d+"\} \d+', text)
    assert "# TYPE metarec_request_duration_seconds histogram" in text
    version = client.get("/healthz").json()["model_version"]
    assert f'metarec_model_info{{model_version="{version}"' in text


def _external_hosts(text: str) -> set[str]:
    return {h for h in re.findall(r"https?://([^/\"'\s<>)]+)", text) if h not in ("testserver", "localhost", "127.0.0.1")}


@pytest.mark.parametrize("key", [None, KEY])
def test_docs_reference_no_other_host(recommender, key):
    headers = {"X-API-Key": key} if key else {}
    with TestClient(create_app(recommender, api_key=key)) as c:
        docs = c.get("/docs", headers=headers)
        assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
        assert "/v1/recommend/batch" in docs.text and "/openapi.json" in docs.text
        assert not _external_hosts(docs.text), _external_hosts(docs.text)
        assert "<script" not in docs.text.lower()
        assert c.get("/redoc", headers=headers).status_code == 404
        schema = c.get("/openapi.json", headers=headers)
        assert schema.status_code == 200 and "/v1/items/{item_id}/similar" in schema.json()["paths"]
        if key:
            assert c.get("/docs").status_code == 401 and c.get("/openapi.json").status_code == 401
