"""Micro-batching: recommend_many equals one-at-a-time recommend_records, errors stay per request, the
batcher's thread answers every request with its own answer, and the service gives the same answers with
batching on and off. No timing assertions: batches are forced by gating the model call with events."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from metarec.errors import DataError, MetarecError, UnknownIdError
from metarec.serve.personalizer import Personalizer
from metarec.serve import create_app
from metarec.serve import app as app_module
from metarec.serve import schemas as schemas_module
from metarec.serve.batching import MicroBatcher
from metarec.serve.recommender import RecommendQuery

KEY = "batch-key-51c"
HEADERS = {"X-API-Key": KEY}


def _assert_same(got, want, tol: float = 1e-4) -> None:
    """Same ranked items and metadata, scores to ``tol`` (padding changes float summation order only);
    two items may swap only when their scores are equal to ``tol`` (a near-tie)."""
    assert got.unknown_item_ids == want.unknown_item_ids
    assert len(got.items) == len(want.items)
    want_scores = {i["item_id"]: i["score"] for i in want.items}
    for g, w in zip(got.items, want.items):
        assert g["score"] == pytest.approx(w["score"], abs=tol)
        if g["item_id"] == w["item_id"]:
            assert g == {**w, "score": g["score"]}
        else:
            assert want_scores.get(g["item_id"], want.items[-1]["score"]) == pytest.approx(w["score"], abs=tol)


def _queries(ids: list[str], n: int, new_user, seed: int = 0) -> list[RecommendQuery]:
    """Users that differ in support size (1-25 ratings), attributes, k and exclude_rated."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        chosen = rng.choice(len(ids), size=int(rng.integers(1, 26)), replace=False)
        ratings = {ids[i]: float(rng.integers(1, 6)) for i in chosen}
        user = new_user(u) if u % 3 else None
        out.append(RecommendQuery(ratings, user, k=int(rng.integers(1, 30)), exclude_rated=bool(u % 4)))
    return out


@pytest.fixture(scope="module")
def catalogue_ids(recommender) -> list[str]:
    return list(recommender.checkpoint.item_vocab.ids)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_recommend_many_equals_one_at_a_time(recommender, catalogue_ids, serve_data, batch_size):
    queries = _queries(catalogue_ids, 20, serve_data.new_user, seed=batch_size)
    many = recommender.recommend_many(queries, batch_size=batch_size)
    assert len(many) == len(queries)
    for query, got in zip(queries, many):
        want = recommender.recommend_records(query.ratings, query.user_attributes, k=query.k,
                                             exclude_rated=query.exclude_rated)
        _assert_same(got, want)
        if query.exclude_rated:
            assert not {i["item_id"] for i in got.items} & set(query.ratings)


def test_recommend_many_keeps_errors_per_query(recommender, popular_ids):
    good = RecommendQuery({popular_ids[0]: 5, popular_ids[1]: 2, "no-such-item": 3}, k=5)
    queries = [
        good,
        RecommendQuery({"nope": 4}),  # nothing known
        RecommendQuery({popular_ids[2]: 9}),  # outside the rating scale
        RecommendQuery({popular_ids[2]: 4}, {"Gender": "F"}),  # unknown attribute name
        RecommendQuery({popular_ids[2]: 4}, k=0),
        RecommendQuery({}),  # empty support
        good,
    ]
    out = recommender.recommend_many(queries)
    assert isinstance(out[1], UnknownIdError)
    assert isinstance(out[2], DataError) and "not in [1, 5]" in str(out[2])
    assert isinstance(out[3], DataError) and "unknown user attribute" in str(out[3])
    assert isinstance(out[4], DataError) and "k must be a positive integer" in str(out[4])
    assert isinstance(out[5], DataError) and "empty" in str(out[5])
    for answer in (out[0], out[6]):
        assert answer.unknown_item_ids == ["no-such-item"] and len(answer.items) == 5
        _assert_same(answer, recommender.recommend_records(good.ratings, k=5))
    assert recommender.recommend_many([]) == []
    with pytest.raises(MetarecError, match="batch_size"):
        recommender.recommend_many([good], batch_size=0)


def test_adapt_many_equals_adapt(recommender, popular_ids, serve_data):
    personalizer = Personalizer(recommender.checkpoint)
    users = [({popular_ids[0]: 5.0}, None),
             ({popular_ids[3]: 1.0, popular_ids[4]: 4.0, popular_ids[9]: 2.0}, serve_data.new_user(22))]
    batch = personalizer.adapt_many(users)
    scores = batch.catalogue_scores()
    assert scores.shape == (2, recommender.n_items) and len(batch) == 2
    for row, (ratings, attributes) in zip(scores, users):
        single = personalizer.adapt(ratings, attributes)
        np.testing.assert_allclose(row, single.predict_idx(personalizer.all_idx), atol=1e-5)
    tops = batch.recommend(k=[3, 4], exclude_rated=[True, False])
    assert [len(t) for t in tops] == [3, 4]
    assert tops[0] == personalizer.adapt(*users[0]).recommend(3) or \
        [s for _, s in tops[0]] == pytest.approx([s for _, s in personalizer.adapt(*users[0]).recommend(3)], abs=1e-5)
    with pytest.raises(DataError, match="not a number"):
        personalizer.adapt_many([({popular_ids[0]: "five"}, None)])


class _Gated:
    """A recommender whose recommend_many waits for ``release`` (after saying it was ``entered``), so a
    test decides what is queued while a batch runs - no sleeps, no timing."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def recommend_many(self, queries, batch_size=4):
        self.sizes.append(len(queries))
        self.entered.set()
        self.release.wait(30)
        return self.inner.recommend_many(queries, batch_size=batch_size)


def test_batcher_batches_what_is_queued_and_answers_each(recommender, catalogue_ids, serve_data):
    gated = _Gated(recommender)
    batcher = MicroBatcher(gated, batch_size=2)
    queries = _queries(catalogue_ids, 7, serve_data.new_user, seed=3)
    bad = RecommendQuery({"nope": 3})

    async def scenario():
        batcher.start()
        first = asyncio.ensure_future(batcher.recommend(queries[0]))
        await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 30)
        rest = [asyncio.ensure_future(batcher.recommend(q)) for q in [*queries[1:], bad]]
        await asyncio.sleep(0)  # let every request reach the queue
        gated.release.set()
        answers = await asyncio.gather(first, *rest, return_exceptions=True)
        batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert gated.sizes == [1, 7]  # the lone first request at once, then everything that queued meanwhile
    assert batcher.batches == 2 and batcher.requests == 8
    for query, got in zip(queries, answers):
        _assert_same(got, recommender.recommend_records(query.ratings, query.user_attributes, k=query.k,
                                                        exclude_rated=query.exclude_rated))
    assert isinstance(answers[-1], UnknownIdError)


def test_batcher_survives_a_failing_batch(recommender, popular_ids):
    class Broken:
        calls = 0

        def recommend_many(self, queries, batch_size=4):
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("boom")
            return recommender.recommend_many(queries, batch_size=batch_size)

    batcher = MicroBatcher(Broken())

    async def scenario():
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.recommend(RecommendQuery({popular_ids[0]: 4}))
            return await batcher.recommend(RecommendQuery({popular_ids[0]: 4}, k=3))
        finally:
            batcher.stop()

    assert len(asyncio.run(scenario()).items) == 3


@pytest.fixture(scope="module")
def clients(recommender):
    with TestClient(create_app(recommender, api_key=KEY, batching=True)) as on, \
            TestClient(create_app(recommender, api_key=KEY, batching=False)) as off:
        yield on, off


def _body(u: int, ids: list[str], new_user) -> dict:
    ratings = [{"item_id": ids[(u * 7 + j * 13) % 300], "rating": 1 + (u + j) % 5} for j in range(1 + u % 9)]
    return {"ratings": ratings, "user": new_user(u), "k": 5 + u % 11}


def test_service_batching_on_off_and_concurrent_equal(clients, catalogue_ids, serve_data):
    on, off = clients
    bodies = [_body(u, catalogue_ids, serve_data.new_user) for u in range(32)]
    bodies[5] = {"ratings": [{"item_id": "nope", "rating": 3}]}  # one bad request among good ones
    sequential = [off.post("/v1/recommend", json=b, headers=HEADERS) for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda b: on.post("/v1/recommend", json=b, headers=HEADERS), bodies))
    for got, want in zip(concurrent, sequential):
        assert got.status_code == want.status_code, got.text
        if want.status_code != 200:
            assert got.json() == want.json()
            continue
        g, w = got.json(), want.json()
        assert g["model_version"] == w["model_version"]
        _assert_same(_Answer(g), _Answer(w))
    assert sequential[5].status_code == 422 and "none of the rated items is known" in sequential[5].text
    assert len({tuple(i["item_id"] for i in r.json()["items"]) for r in sequential if r.status_code == 200}) > 20
    assert on.app.state.batcher is not None and off.app.state.batcher is None


class _Answer:
    def __init__(self, payload: dict) -> None:
        self.items, self.unknown_item_ids = payload["items"], payload["unknown_item_ids"]


def test_json_without_orjson(monkeypatch, clients, catalogue_ids, serve_data):
    on, _ = clients
    with_orjson = on.post("/v1/recommend", json=_body(1, catalogue_ids, serve_data.new_user), headers=HEADERS)
    monkeypatch.setattr(schemas_module, "orjson", None)  # JSONResponse lives in metarec.serve.schemas
    plain = on.post("/v1/recommend", json=_body(1, catalogue_ids, serve_data.new_user), headers=HEADERS)
    assert plain.status_code == with_orjson.status_code == 200
    assert json.loads(plain.content) == json.loads(with_orjson.content)


def test_app_from_env_options(monkeypatch, saved_dir, popular_ids):
    monkeypatch.setenv(app_module.ENV_DIR, str(saved_dir))
    monkeypatch.setenv(app_module.ENV_OPTIONS, json.dumps({"batching": False}))
    monkeypatch.delenv(app_module.ENV_API_KEY, raising=False)
    app = app_module.app_from_env()
    assert app.state.batcher is None
    monkeypatch.setenv(app_module.ENV_OPTIONS, "[1]")
    with pytest.raises(MetarecError, match="JSON object"):
        app_module.app_from_env()
