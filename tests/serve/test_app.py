"""The HTTP service through FastAPI's TestClient: answers, validation, limits, API key, concurrency; the CLI."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import metarec

from metarec.cli import app as cli_app
from metarec.serve import create_app, create_app_from_dir

KEY = "test-key-0f9c2a"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def client(recommender):
    with TestClient(create_app(recommender, api_key=KEY, max_ratings=20, max_k=50)) as c:
        yield c


@pytest.fixture(scope="module")
def user(serve_data) -> dict:
    return serve_data.new_user(7)


def _body(ids: list[str], user: dict | None = None, **extra) -> dict:
    ratings = [{"item_id": ids[0], "rating": 5}, {"item_id": ids[5], "rating": 4}, {"item_id": ids[9], "rating": 1}]
    return {"ratings": ratings, **({"user": user} if user else {}), **extra}


def _post(client, path: str, body: dict, headers: dict | None = HEADERS):
    return client.post(path, json=body, headers=headers)


def _detail_locs(response) -> list[list]:
    return [d["loc"] for d in response.json()["detail"]]


def test_recommend(client, recommender, popular_ids, user):
    r = _post(client, "/v1/recommend", _body(popular_ids, user, k=8))
    assert r.status_code == 200, r.text
    out = r.json()
    items = out["items"]
    assert len(items) == 8
    assert all(isinstance(i["item_id"], str) and i["title"] for i in items)
    assert not {i["item_id"] for i in items} & {popular_ids[0], popular_ids[5], popular_ids[9]}
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    assert out["unknown_item_ids"] == [] and out["model_version"] == recommender.model_version


def test_recommend_integer_ids_and_include_rated(client, popular_ids):
    body = _body(popular_ids, k=50, exclude_rated=False)
    numeric = popular_ids[0].isdigit()  # ML-100K ids are numbers; synthetic ones are not (then: an unknown id)
    body["ratings"][0]["item_id"] = int(popular_ids[0]) if numeric else 123456  # a JSON number: read as its string
    r = _post(client, "/v1/recommend", body)
    assert r.status_code == 200, r.text
    assert r.json()["unknown_item_ids"] == ([] if numeric else ["123456"])
    assert all(isinstance(i["item_id"], str) for i in r.json()["items"])


def test_unknown_items_reported(client, popular_ids):
    body = _body(popular_ids)
    body["ratings"].append({"item_id": "no-such-film", "rating": 3})
    r = _post(client, "/v1/recommend", body)
    assert r.status_code == 200 and r.json()["unknown_item_ids"] == ["no-such-film"]


def test_all_unknown_is_422(client):
    r = _post(client, "/v1/recommend", {"ratings": [{"item_id": "nope", "rating": 4}, {"item_id": "nada", "rating": 2}]})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "ratings"] and "none of the rated items is known" in detail["msg"]


@pytest.mark.parametrize("raw", [b'"NaN"', b"NaN", b"Infinity", b"7", b"0", b'"four"', b"null"])
def test_bad_rating_is_422_naming_the_field(client, popular_ids, raw):
    body = b'{"ratings": [{"item_id": "%s", "rating": %s}]}' % (popular_ids[0].encode(), raw)
    r = client.post("/v1/recommend", content=body, headers={**HEADERS, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert ["body", "ratings", 0, "rating"] in _detail_locs(r)


def test_limits(client, popular_ids):
    r = _post(client, "/v1/recommend", _body(popular_ids, k=51))
    assert r.status_code == 422 and ["body", "k"] in _detail_locs(r)
    assert "less than or equal to 50" in r.json()["detail"][0]["msg"]
    too_many = {"ratings": [{"item_id": i, "rating": 3} for i in popular_ids[:21]]}
    r = _post(client, "/v1/recommend", too_many)
    assert r.status_code == 422 and ["body", "ratings"] in _detail_locs(r)
    r = _post(client, "/v1/recommend", {"ratings": []})
    assert r.status_code == 422 and ["body", "ratings"] in _detail_locs(r)
    twice = {"ratings": [{"item_id": popular_ids[0], "rating": 3}, {"item_id": popular_ids[0], "rating": 4}]}
    r = _post(client, "/v1/recommend", twice)
    assert r.status_code == 422 and "more than once" in r.text
    r = _post(client, "/v1/recommend", {**_body(popular_ids), "user": {"Gender": "F"}})
    assert r.status_code == 422 and ["body", "user"] in _detail_locs(r) and "unknown user attribute" in r.text
    r = _post(client, "/v1/recommend", {**_body(popular_ids), "surprise": 1})
    assert r.status_code == 422


def test_body_size_limit(client, popular_ids):
    big = {"ratings": [{"item_id": popular_ids[0], "rating": 3}], "user": {"gender": "x" * 70_000}}
    assert _post(client, "/v1/recommend", big).status_code == 413
    # no Content-Length (chunked upload): counted as it arrives
    chunks = iter([b'{"ratings": [', b" " * 40_000, b" " * 40_000, b"]}"])
    r = client.post("/v1/recommend", content=chunks, headers={**HEADERS, "content-type": "application/json"})
    assert r.status_code == 413


def test_api_key(client, popular_ids):
    assert _post(client, "/v1/recommend", _body(popular_ids), headers=None).status_code == 401
    r = _post(client, "/v1/recommend", _body(popular_ids), headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "ApiKey"
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/items/1").status_code == 401
    assert _post(client, "/v1/recommend", _body(popular_ids)).status_code == 200
    assert client.get("/healthz").status_code == 200  # open: load balancers probe it without a key


def test_from_dir_without_api_key(saved_dir, recommender, popular_ids):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the app's 1 (nor the suite's, conftest.py): a restore must show
    try:
        with TestClient(create_app_from_dir(saved_dir)) as open_client:
            assert open_client.get("/healthz").json()["model_version"] == recommender.model_version
            assert _post(open_client, "/v1/recommend", _body(popular_ids), headers=None).status_code == 200
        assert torch.get_num_threads() == 2  # the caller's thread is left as it was
    finally:
        torch.set_num_threads(before)


def test_predict(client, popular_ids, user):
    body = {**_body(popular_ids, user), "item_ids": [popular_ids[1], "nope", popular_ids[2]]}
    r = _post(client, "/v1/predict", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [p["item_id"] for p in out["predictions"]] == [popular_ids[1], popular_ids[2]]
    assert all(1.0 <= p["score"] <= 5.0 and math.isfinite(p["score"]) for p in out["predictions"])
    assert out["unknown_item_ids"] == ["nope"]
    rec = _post(client, "/v1/recommend", _body(popular_ids, user, k=3)).json()["items"]
    same = _post(client, "/v1/predict", {**_body(popular_ids, user), "item_ids": [i["item_id"] for i in rec]}).json()
    assert [p["score"] for p in same["predictions"]] == pytest.approx([i["score"] for i in rec], rel=1e-6)


def test_items_model_onboarding_health(client, recommender, serve_data):
    r = client.get(f"/v1/items/{serve_data.item_id}", headers=HEADERS)
    assert r.status_code == 200 and r.json()["title"].startswith(serve_data.title_prefix)
    r = client.get("/v1/items/no-such-item", headers=HEADERS)
    assert r.status_code == 404 and "no-such-item" in r.json()["detail"]
    model = client.get("/v1/model", headers=HEADERS).json()
    assert model["model_version"] == recommender.model_version and model["n_items"] == serve_data.dataset.n_items
    assert model["dataset"] == serve_data.dataset.name and model["model"]["kind"] == "feature-mlp"
    assert model["versions"] == {"metarec": metarec.__version__} and model["limits"]["max_k"] == 50  # no library list
    onboarding = client.get("/v1/onboarding?n=12", headers=HEADERS).json()["items"]
    assert len(onboarding) == 12 and all(i["title"] for i in onboarding)
    assert [i["item_id"] for i in onboarding] == recommender.onboarding_items(12)["item_id"].tolist()
    r = client.get("/v1/onboarding?n=0", headers=HEADERS)
    assert r.status_code == 422 and ["query", "n"] in _detail_locs(r) and "n must be a positive integer" in r.text
    first = [i["item_id"] for i in onboarding[:10]]
    r = client.post("/v1/onboarding", json={"n": 5, "shown": [*first, "no-such-item"], "rated": first[:2]},
                    headers=HEADERS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["item_id"] for i in body["items"]] == recommender.onboarding_items(5, first, first[:2])["item_id"].tolist()
    assert body["unknown_item_ids"] == ["no-such-item"] and body["model_version"] == recommender.model_version
    assert not {i["item_id"] for i in body["items"]} & set(first)
    assert client.post("/v1/onboarding", json={}, headers=HEADERS).json()["items"] == onboarding[:10]
    for bad in ({"n": 0}, {"n": 5, "shown": "50"}, {"n": 5, "rated": [""]}, {"n": 5, "extra": 1}):
        assert client.post("/v1/onboarding", json=bad, headers=HEADERS).status_code == 422, bad
    assert client.post("/v1/onboarding", json={"n": 5}).status_code == 401
    assert client.get("/healthz").json() == {"status": "ok", "model_version": recommender.model_version}
    assert client.get("/openapi.json", headers=HEADERS).json()["paths"]["/v1/recommend"]["post"]


def test_concurrent_requests_match_sequential(client, popular_ids, serve_data):
    bodies = []
    for u in range(24):
        ids = popular_ids[u % 7:] + popular_ids[: u % 7]
        bodies.append(_body(ids, serve_data.new_user(u), k=10))
    sequential = [_post(client, "/v1/recommend", b).json() for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda b: _post(client, "/v1/recommend", b).json(), bodies))
    for got, want in zip(concurrent, sequential):  # batched with others: equal up to float rounding
        _assert_same_answer(got, want)
    assert len({tuple(i["item_id"] for i in s["items"]) for s in sequential}) > 1  # the users really differ


def _assert_same_answer(got: dict, want: dict, tol: float = 1e-4) -> None:
    """Same items, metadata and order, scores to ``tol``: a user batched with others is padded, which
    changes float summation order, not the maths (near-ties may swap, so a swap needs equal scores)."""
    assert got["unknown_item_ids"] == want["unknown_item_ids"] and got["model_version"] == want["model_version"]
    assert len(got["items"]) == len(want["items"])
    for g, w in zip(got["items"], want["items"]):
        assert g["score"] == pytest.approx(w["score"], abs=tol)
        if g["item_id"] != w["item_id"]:  # a near-tie swapped (maybe across the k-th place): same score
            partner = next((x for x in want["items"] if x["item_id"] == g["item_id"]), want["items"][-1])
            assert partner["score"] == pytest.approx(w["score"], abs=tol), (got, want)
        else:
            assert g == {**w, "score": g["score"]}


def test_cli_serve_command_exists():
    result = CliRunner().invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--host", "--port", "--api-key", "--workers", "METAREC_API_KEY", "--no-batching", "--batch-size",
                 "--batch-wait-ms", "--no-access-log"):
        assert flag in result.output


def test_cli_serve_bad_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "error" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("raw", [b'"abc"', b'"NaN"', b"NaN", b"Infinity", b"true", b"[30]"])
def test_a_numeric_user_attribute_that_is_not_a_number_is_422(client, recommender, popular_ids, raw):
    numeric = [name for name, kind in recommender._user_columns.items() if kind == "numeric"]
    if not numeric:
        pytest.skip("the served model has no numeric user attribute (synthetic fallback data)")
    body = b'{"ratings": [{"item_id": "%s", "rating": 4}], "user": {"%s": %s}}' % (
        popular_ids[0].encode(), numeric[0].encode(), raw)
    r = client.post("/v1/recommend", content=body, headers={**HEADERS, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert ["body", "user", numeric[0]] in _detail_locs(r)
    good = b'{"ratings": [{"item_id": "%s", "rating": 4}], "user": {"%s": "30"}}' % (popular_ids[0].encode(),
                                                                                   numeric[0].encode())
    assert client.post("/v1/recommend", content=good, headers={**HEADERS, "content-type": "application/json"}).status_code == 200



@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_with_a_key_the_schema_and_docs_need_it(client, path):
    assert client.get(path).status_code == 401
    r = client.get(path, headers=HEADERS)
    assert r.status_code == 200 and "/v1/recommend" in r.text  # /docs: the self-contained API reference


def test_without_a_key_the_docs_are_open(recommender):
    with TestClient(create_app(recommender)) as open_client:
        assert open_client.get("/openapi.json").status_code == 200 and open_client.get("/docs").status_code == 200


@pytest.mark.parametrize("raw", [b"12345", b"true", b"1.5", b'["F"]'])
def test_a_categorical_user_attribute_of_the_wrong_type_is_422(client, popular_ids, raw):
    body = b'{"ratings": [{"item_id": "%s", "rating": 4}], "user": {"gender": %s}}' % (popular_ids[0].encode(), raw)
    r = client.post("/v1/recommend", content=body, headers={**HEADERS, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert ["body", "user", "gender"] in _detail_locs(r)


def test_an_unseen_categorical_value_of_the_right_type_is_a_new_category(client, popular_ids):
    body = {"ratings": [{"item_id": popular_ids[0], "rating": 4}], "user": {"gender": "not-in-training"}}
    assert _post(client, "/v1/recommend", body).status_code == 200
