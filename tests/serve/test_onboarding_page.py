"""The onboarding web page through FastAPI's TestClient: served, public, self-contained, and every call its
script makes exists with the fields the script sends and reads (the browser run is test_onboarding_browser)."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from fastapi.testclient import TestClient

from metarec.serve import create_app

KEY = "test-key-onboarding-page"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def client(recommender):
    with TestClient(create_app(recommender, api_key=KEY)) as c:
        yield c


@pytest.fixture(scope="module")
def page(client) -> str:
    return client.get("/onboarding").text


def _script(page: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 1
    return scripts[0]


def _calls(script: str) -> dict[tuple[str, str], str]:
    """(method, path) -> the body literal of every ``api(...)`` call in the page's script."""
    found = re.findall(r'api\("(GET|POST)", "([\w/]+)[^"]*"([^)]*)\)', script)
    return {(m, path): (re.findall(r"\{[^}]*\}", rest) or [""])[0] for m, path, rest in found}


def _keys(literal: str) -> set[str]:
    """The keys of a JS object literal such as ``{ratings, k: TOP_K, exclude_rated: true}``."""
    return {part.split(":")[0].strip() for part in literal.strip("{}").split(",")}


def _body_fields(client, path: str) -> set[str]:
    schema = client.get("/openapi.json", headers=HEADERS).json()
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return set(schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"])


def test_onboarding_page_is_public_and_self_contained(client, page):
    r = client.get("/onboarding")  # no key: the page is static; its calls need the key
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    hosts = {h for h in re.findall(r"https?://([^/\"'\s<>)]+)", page)}
    assert not hosts, hosts
    assert not re.search(r"<script[^>]*\bsrc=|<link[^>]*stylesheet|@import|url\(", page, flags=re.I)
    assert "What have you seen?" in page and "X-API-Key" in page
    redirect = client.get("/", follow_redirects=False)
    assert redirect.status_code in (302, 307) and redirect.headers["location"] == "onboarding"
    assert client.get("/").url.path == "/onboarding"


def test_onboarding_page_csp_names_its_own_script_and_style(client, page):
    csp = client.get("/onboarding").headers["content-security-policy"]
    for inline in (_script(page), re.search(r"<style>(.*?)</style>", page, flags=re.S).group(1)):
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp


def test_onboarding_page_holds_no_data(client, page, recommender, serve_data):
    assert recommender.model_version not in page and serve_data.title_prefix not in page
    assert "/onboarding" not in client.get("/openapi.json", headers=HEADERS).json()["paths"]  # a page, not an API


def test_onboarding_page_calls_exist_with_its_fields(client, page):
    calls = _calls(_script(page))
    assert set(calls) == {("GET", "v1/model"), ("GET", "v1/onboarding"), ("POST", "v1/onboarding"),
                          ("POST", "v1/recommend")}
    paths = client.get("/openapi.json", headers=HEADERS).json()["paths"]
    for method, path in calls:
        assert method.lower() in paths[f"/{path}"], (method, path)
    assert _keys(calls["POST", "v1/onboarding"]) == _body_fields(client, "/v1/onboarding") == {"n", "shown", "rated"}
    assert _keys(calls["POST", "v1/recommend"]) <= _body_fields(client, "/v1/recommend")
    assert "({item_id, rating})" in _script(page)  # each rating as the API's RatingIn


def test_onboarding_page_round_trip(client, page):
    """The JSON the script relies on, in the order it asks: scale, first round, next round, top 10."""
    assert all(client.get(p).status_code == 401 for p in ("/v1/model", "/v1/onboarding?n=10"))
    low, high = client.get("/v1/model", headers=HEADERS).json()["rating_scale"]
    first = client.get("/v1/onboarding?n=10", headers=HEADERS).json()["items"]
    assert len(first) == 10 and all(i["item_id"] and i["title"] for i in first)
    shown = [i["item_id"] for i in first]
    rated = {shown[0]: high, shown[3]: low + (high - low) * 3 / 4, shown[6]: low}
    body = {"n": 10, "shown": shown, "rated": [*rated, shown[8]]}  # rated: the ones marked "seen it"
    second = client.post("/v1/onboarding", json=body, headers=HEADERS).json()
    assert len(second["items"]) == 10 and not {i["item_id"] for i in second["items"]} & set(shown)
    ratings = [{"item_id": i, "rating": r} for i, r in rated.items()]
    top = client.post("/v1/recommend", json={"ratings": ratings, "k": 10, "exclude_rated": True},
                      headers=HEADERS).json()["items"]
    assert len(top) == 10 and not {i["item_id"] for i in top} & set(rated)
    assert all(isinstance(i["score"], float) and i["title"] for i in top)


def test_onboarding_page_error_shapes(client, page):
    """What the script's describe() reads: a 401's detail is a string, a 422's a list of {loc, msg}."""
    r = client.post("/v1/recommend", json={"ratings": []}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and isinstance(r.json()["detail"], str)
    r = client.post("/v1/recommend", json={"ratings": []}, headers=HEADERS)
    assert r.status_code == 422 and all({"loc", "msg"} <= set(d) for d in r.json()["detail"])
    assert 'e.loc || []).join(".")' in _script(page) and "e.msg" in _script(page)
