"""Ratings of a new item folded into a served neural-cf model (POST /v1/items/{id}/ratings), where the
right answer is known: the ridge solution on the raters' adapted (w, c) computed here with numpy, two
calls equal to one, an item everybody loves rising (one everybody hates falling), the 4xx, save and load."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from metarec.serve import ColdStartRecommender, create_app
from metarec.serve.item_ratings import fold_in_penalty
from metarec.serve.personalizer import Personalizer
from metarec.serve.replicas import replica

KEY = "test-key-ratings"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture()
def rec(neural_cf_dir) -> ColdStartRecommender:
    """A neural-cf recommender of each test's own: the tests change its items."""
    return ColdStartRecommender.load(neural_cf_dir, replicas=1)


@pytest.fixture()
def client(rec):
    with TestClient(create_app(rec, api_key=KEY, max_batch_users=100, max_k=5000)) as c:
        yield c


def _add(client, rec, serve_data, item_id: str) -> None:
    multi = serve_data.multi_column
    attributes = {multi: list(rec.items[multi].dropna().iloc[3])[:2]}
    assert client.post("/v1/items", json={"item_id": item_id, "attributes": attributes}, headers=HEADERS).status_code == 201


def _raters(popular_ids: list[str], n: int, rating, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        rated = rng.choice(len(popular_ids), 2 + u % 4, replace=False)
        out.append({"ratings": [{"item_id": popular_ids[j], "rating": int(rng.integers(1, 6))} for j in rated],
                    "rating": rating(u) if callable(rating) else rating})
    return out


def _vector(rec: ColdStartRecommender, item_id: str) -> np.ndarray:
    frame = rec.item_vectors().set_index("item_id")
    return np.r_[frame.loc[item_id, "vector"], frame.loc[item_id, "bias"]].astype(np.float64)


def _weights(rec: ColdStartRecommender, raters: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Each rater adapted alone (not batched as the service does), on a private replica."""
    personalizer = Personalizer(replica(rec.checkpoint))
    w, c = [], []
    for rater in raters:
        user = personalizer.adapt({r["item_id"]: r["rating"] for r in rater["ratings"]})
        w_u, c_u = personalizer.learner.user_weights(user.params, user.task)
        w.append(w_u[0].double().numpy())
        c.append(float(c_u[0]))
    return np.array(w), np.array(c)


def test_vector_is_the_ridge_solution_on_the_raters_weights(client, rec, popular_ids, serve_data):
    _add(client, rec, serve_data, "new-a")
    prior = _vector(rec, "new-a")
    version = rec.model_version
    raters = _raters(popular_ids, 9, lambda u: 1 + u % 5)
    r = client.post("/v1/items/new-a/ratings", json={"raters": raters}, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["n_ratings_folded_in"] == 9 and r.json()["model_version"] == rec.model_version != version
    w, c = _weights(rec, raters)
    f = w.shape[1]
    z = np.c_[w, np.ones(len(w))]
    y = np.array([x["rating"] for x in raters]) - w @ prior[:f] - prior[f] - c
    want = prior + np.linalg.solve(z.T @ z + np.diag(fold_in_penalty(rec.checkpoint)), z.T @ y)
    np.testing.assert_allclose(_vector(rec, "new-a"), want, rtol=1e-4, atol=1e-5)
    assert np.abs(want - prior).max() > 1e-4  # the ratings moved it


def test_two_calls_equal_one_with_all_raters(client, rec, popular_ids, serve_data):
    _add(client, rec, serve_data, "new-b")
    _add(client, rec, serve_data, "new-c")
    raters = _raters(popular_ids, 10, lambda u: 5 - u % 3, seed=1)
    for part in (raters[:4], raters[4:]):
        assert client.post("/v1/items/new-b/ratings", json={"raters": part}, headers=HEADERS).status_code == 200
    assert client.post("/v1/items/new-c/ratings", json={"raters": raters}, headers=HEADERS).json()[
        "n_ratings_folded_in"] == 10
    np.testing.assert_allclose(_vector(rec, "new-b"), _vector(rec, "new-c"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rating", [5, 1])
def test_loved_item_rises_and_hated_item_falls(client, rec, popular_ids, serve_data, rating):
    item = f"new-{rating}"
    _add(client, rec, serve_data, item)
    newcomer = {"ratings": [{"item_id": popular_ids[1], "rating": 4}, {"item_id": popular_ids[6], "rating": 2}],
                "user": serve_data.new_user(2)}

    def rank_and_score() -> tuple[int, float]:
        top = client.post("/v1/recommend", json={**newcomer, "k": rec.n_items}, headers=HEADERS).json()["items"]
        score = client.post("/v1/predict", json={**newcomer, "item_ids": [item]}, headers=HEADERS).json()
        ids = [i["item_id"] for i in top]
        return (ids.index(item) if item in ids else len(ids)), score["predictions"][0]["score"]

    rank, score = rank_and_score()
    r = client.post(f"/v1/items/{item}/ratings", json={"raters": _raters(popular_ids, 100, rating, seed=2)},
                    headers=HEADERS)
    assert r.status_code == 200, r.text
    new_rank, new_score = rank_and_score()
    if rating == 5:
        assert new_rank < rank and score < new_score <= 5
    else:
        assert new_rank > rank and 1 <= new_score < score
    assert abs(new_score - rating) < abs(score - rating)


def test_4xx(client, rec, popular_ids, serve_data, recommender):
    _add(client, rec, serve_data, "new-d")
    good = _raters(popular_ids, 2, 4)
    post = lambda item, body, **kw: client.post(f"/v1/items/{item}/ratings", json=body,  # noqa: E731
                                                 headers=kw.get("headers", HEADERS))
    assert post("new-d", {"raters": good}, headers={}).status_code == 401
    missing = post("no-such-item", {"raters": good})
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]
    assert post(serve_data.item_id, {"raters": good}).status_code == 409  # trained: not folded in

    def loc(body) -> list:
        r = post("new-d", body)
        assert r.status_code == 422, r.text
        return r.json()["detail"][0]["loc"]

    assert loc({"raters": []}) == ["body", "raters"]
    assert loc({"raters": [good[0], {**good[1], "rating": 9}]}) == ["body", "raters", 1, "rating"]
    assert loc({"raters": [{**good[0], "ratings": []}]}) == ["body", "raters", 0, "ratings"]
    own = {**good[0], "ratings": [*good[0]["ratings"], {"item_id": "new-d", "rating": 3}]}
    assert loc({"raters": [own]}) == ["body", "raters", 0, "ratings"]
    unknown = {**good[0], "ratings": [{"item_id": "nope", "rating": 3}]}
    assert loc({"raters": [unknown]}) == ["body", "raters", 0, "ratings"]
    assert rec.items.index.tolist().count("new-d") == 1 and "n_ratings_folded_in" not in rec.item("new-d")
    with TestClient(create_app(rec, item_writes=False)) as c:  # several workers: off
        assert c.post("/v1/items/new-d/ratings", json={"raters": good}).status_code == 409
    with TestClient(create_app(recommender)) as c:  # feature-mlp: no item vector
        r = c.post(f"/v1/items/{popular_ids[0]}/ratings", json={"raters": good})
        assert r.status_code == 409 and "linear" in r.json()["detail"]


def test_save_and_load_keep_the_folded_in_vector(client, rec, popular_ids, serve_data, tmp_path):
    _add(client, rec, serve_data, "new-e")
    client.post("/v1/items/new-e/ratings", json={"raters": _raters(popular_ids, 6, 5)}, headers=HEADERS)
    folded = _vector(rec, "new-e")
    loaded = ColdStartRecommender.load(rec.save(tmp_path / "rated"))
    np.testing.assert_array_equal(_vector(loaded, "new-e"), folded)
    newcomer = {popular_ids[0]: 4.0, popular_ids[3]: 2.0}
    assert loaded.predict(newcomer, ["new-e"])["score"].tolist() == pytest.approx(
        rec.predict(newcomer, ["new-e"])["score"].tolist(), abs=1e-6)
    assert "+r." in loaded.model_version  # the weights' version and the folded-in ratings'
    with TestClient(create_app(loaded)) as c:  # ratings posted after loading add to the saved ones
        r = c.post("/v1/items/new-e/ratings", json={"raters": _raters(popular_ids, 2, 5, seed=5)})
        assert r.status_code == 200 and r.json()["n_ratings_folded_in"] == 8
