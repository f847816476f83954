"""Serving the neural-cf preset (item fold-in by a ridge solve, the catalogue's Gram matrix precomputed):
batched and one-at-a-time answers agree, predict agrees with recommend, and a saved folder serves the same."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.serve import ColdStartRecommender
from metarec.serve.recommender import RecommendQuery


def test_neural_cf_batched_equals_one_at_a_time(neural_cf, popular_ids, serve_data):
    assert neural_cf.info()["model"]["kind"] == "neural-cf"
    rng = np.random.default_rng(0)
    queries = [RecommendQuery({popular_ids[j]: float(rng.integers(1, 6)) for j in rng.choice(40, 1 + u % 7, replace=False)},
                              serve_data.new_user(u) if u % 2 else None, k=3 + u % 9) for u in range(12)]
    for query, got in zip(queries, neural_cf.recommend_many(queries, batch_size=5)):
        want = neural_cf.recommend_records(query.ratings, query.user_attributes, k=query.k)
        assert [i["score"] for i in got.items] == pytest.approx([i["score"] for i in want.items], abs=1e-4)
        assert not {i["item_id"] for i in got.items} & set(query.ratings)


def test_neural_cf_predict_and_saved_folder(neural_cf, popular_ids, serve_data, tmp_path):
    rated, user = {popular_ids[0]: 5.0, popular_ids[4]: 1.0, popular_ids[9]: 4.0}, serve_data.new_user(3)
    top = neural_cf.recommend(rated, user, k=8)
    pred = neural_cf.predict(rated, top["item_id"].tolist(), user)
    np.testing.assert_allclose(pred["score"].to_numpy(), top["score"].to_numpy(), rtol=1e-5)
    low, high = neural_cf.rating_scale
    assert top["score"].between(low, high).all() and top["score"].is_monotonic_decreasing
    loaded = ColdStartRecommender.load(neural_cf.save(tmp_path / "ncf"))
    assert loaded.model_version == neural_cf.model_version
    pd.testing.assert_frame_equal(loaded.recommend(rated, user, k=8), top)
