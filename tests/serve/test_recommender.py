"""The ColdStartRecommender facade: recommend / predict / onboarding, save-load round trips, fit on frames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metarec.errors import DataError, MetarecError, UnknownIdError
from metarec.meta.run import RunConfig
from metarec.serve import ColdStartRecommender


def _ratings(ids: list[str]) -> dict[str, float]:
    return {ids[0]: 5, ids[3]: 4, ids[7]: 2, ids[12]: 1, ids[20]: 4}


def test_recommend_frame(recommender, popular_ids, serve_data):
    rated = _ratings(popular_ids)
    top = recommender.recommend(rated, serve_data.new_user(13), k=7)
    assert list(top.columns[:2]) == ["item_id", "score"] and "title" in top.columns
    assert len(top) == 7 and top["title"].notna().all()
    assert not set(top["item_id"]) & set(rated)
    assert top["score"].is_monotonic_decreasing
    assert top.attrs["unknown_item_ids"] == [] and top.attrs["model_version"] == recommender.model_version
    low, high = recommender.rating_scale
    assert top["score"].between(low, high).all()


def test_recommend_include_rated_and_unknown(recommender, popular_ids):
    rated = {**_ratings(popular_ids), "no-such-item": 3}
    top = recommender.recommend(rated, k=recommender.n_items, exclude_rated=False)
    assert len(top) == recommender.n_items
    assert top.attrs["unknown_item_ids"] == ["no-such-item"]
    with pytest.raises(UnknownIdError, match="none of the rated items is known"):
        recommender.recommend({"no-such-item": 3, "nor-this": 4})


def test_predict_matches_recommend(recommender, popular_ids, serve_data):
    rated, user = _ratings(popular_ids), serve_data.new_user(13)
    top = recommender.recommend(rated, user, k=5)
    pred = recommender.predict(rated, [*top["item_id"], "nope"], user)
    assert list(pred.columns) == ["item_id", "score"]
    assert pred["item_id"].tolist() == top["item_id"].tolist()
    np.testing.assert_allclose(pred["score"].to_numpy(), top["score"].to_numpy(), rtol=1e-6)
    assert pred.attrs["unknown_item_ids"] == ["nope"]


def test_bad_inputs(recommender, popular_ids):
    with pytest.raises(DataError, match="unknown user attribute"):
        recommender.recommend(_ratings(popular_ids), {"Gender": "F"})
    with pytest.raises(DataError, match="rating"):
        recommender.recommend({popular_ids[0]: float("nan")})
    with pytest.raises(DataError, match="rating"):
        recommender.recommend({popular_ids[0]: 9})
    with pytest.raises(DataError, match="k must be"):
        recommender.recommend(_ratings(popular_ids), k=0)
    with pytest.raises(MetarecError, match="not fitted"):
        ColdStartRecommender().recommend({"1": 4})


def test_onboarding_first_round_is_most_rated_among_newcomer_like_users(recommender, serve_data, saved_dir):
    first = recommender.onboarding_items(10)
    assert len(first) == 10 and first["title"].notna().all()
    # most-rated within the panel of newcomer-like meta-train users (counted here from the saved panel) ...
    panel = pd.read_parquet(saved_dir / "onboarding_panel.parquet").drop_duplicates()
    knows = panel.groupby("item_id").size()
    assert knows[first["item_id"]].is_monotonic_decreasing and knows[first["item_id"].iloc[0]] == knows.max()
    # ... which tracks overall popularity
    counts = serve_data.dataset.ratings["item_id"].value_counts()
    assert first["item_id"].iloc[0] in set(counts.index[:5])
    assert first["item_id"].is_unique
    assert all(recommender.item(i)["seen_in_training"] for i in first["item_id"])


def test_onboarding_next_round_depends_on_what_the_user_knew(recommender):
    first = recommender.onboarding_items(10)["item_id"].tolist()
    knew_none = recommender.onboarding_records(10, shown=first)
    knew_all = recommender.onboarding_records(10, shown=first, rated=first)
    for answer in (knew_none, knew_all):
        assert len(answer) == 10 and not {i["item_id"] for i in answer} & set(first)
    assert [i["item_id"] for i in knew_none] != [i["item_id"] for i in knew_all]
    # a mapping of ratings works as ``rated``; unknown ids are reported back, not an error
    ratings = {first[0]: 5.0, first[1]: 2.0}
    result = recommender.onboarding_next(5, shown=[*first, "no-such-item"], rated={**ratings, "nor-this": 3.0})
    assert result.unknown_item_ids == ["no-such-item", "nor-this"]
    assert result.items == recommender.onboarding_records(5, shown=first, rated=list(ratings))
    with pytest.raises(DataError, match="shown"):
        recommender.onboarding_records(5, shown="50")
    with pytest.raises(DataError, match="n must be"):
        recommender.onboarding_records(0)


def test_item_metadata(recommender, serve_data):
    item = recommender.item(serve_data.item_id)
    assert item["item_id"] == serve_data.item_id and item["title"].startswith(serve_data.title_prefix)
    assert isinstance(item[serve_data.multi_column], list) and isinstance(item["year"], int)
    with pytest.raises(UnknownIdError):
        recommender.item("no-such-item")


def test_save_load_round_trip(recommender, popular_ids, serve_data, tmp_path):
    folder = recommender.save(tmp_path / "rec")
    assert {p.name for p in folder.iterdir()} == {"checkpoint", "items.parquet", "item_stats.parquet",
                                                  "onboarding_panel.parquet", "recommender.json", "MODEL_CARD.md"}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary leftovers
    spec = json.loads((folder / "recommender.json").read_text())
    assert spec["model_version"] == recommender.model_version
    loaded = ColdStartRecommender.load(folder)
    assert loaded.model_version == recommender.model_version
    rated, user = _ratings(popular_ids), serve_data.new_user(13)
    pd.testing.assert_frame_equal(loaded.recommend(rated, user, k=20), recommender.recommend(rated, user, k=20))
    pd.testing.assert_frame_equal(loaded.onboarding_items(15), recommender.onboarding_items(15))
    shown, knew = popular_ids[:10], popular_ids[2:5]
    pd.testing.assert_frame_equal(loaded.onboarding_items(10, shown, knew), recommender.onboarding_items(10, shown, knew))
    assert loaded.item(popular_ids[0]) == recommender.item(popular_ids[0])
    # saving again over the same folder replaces it whole
    loaded.save(folder)
    assert ColdStartRecommender.load(folder).model_version == recommender.model_version


def test_load_run_folder(recommender, run_dir, popular_ids, serve_data):
    """A `metarec train` run folder serves the same model, with titles rebuilt from its dataset."""
    from_run = ColdStartRecommender.load(run_dir)
    assert from_run.model_version == recommender.model_version
    rated, user = _ratings(popular_ids), serve_data.new_user(13)
    pd.testing.assert_frame_equal(from_run.recommend(rated, user, k=10), recommender.recommend(rated, user, k=10))
    assert from_run.onboarding_items(10)["item_id"].tolist() == recommender.onboarding_items(10)["item_id"].tolist()
    shown, knew = popular_ids[:10], popular_ids[:3]
    pd.testing.assert_frame_equal(from_run.onboarding_items(10, shown, knew), recommender.onboarding_items(10, shown, knew))
    with pytest.raises(MetarecError, match="no checkpoint"):
        ColdStartRecommender.load(run_dir.parent)


def test_fit_on_frames(tmp_path):
    """Frames in (attribute tables by id column or by index), a served recommender out."""
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 60
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n_users)], "gender": rng.choice(["F", "M"], n_users)})
    items = pd.DataFrame({"genre": rng.choice(["drama", "comedy"], n_items),
                          "title": [f"Film {j}" for j in range(n_items)]},
                         index=pd.Index([f"i{j}" for j in range(n_items)], name="item_id"))
    rows = [(f"u{u}", f"i{j}", float(rng.integers(1, 6)))
            for u in range(n_users) for j in rng.choice(n_items, 25, replace=False)]
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    import torch

    previous = torch.get_num_threads()
    config = RunConfig.preset("feature-mlp", "maml").override("train", epochs=1, threads=1)
    try:
        rec = ColdStartRecommender().fit(ratings, users, items, config=config, name="toy")
    finally:
        torch.set_num_threads(previous)
    assert rec.dataset_name == "toy" and rec.n_items == n_items
    top = rec.recommend({"i1": 5, "i2": 1}, {"gender": "M"}, k=3)
    assert len(top) == 3 and top["title"].str.startswith("Film").all()
    loaded = ColdStartRecommender.load(rec.save(tmp_path / "toy"))
    pd.testing.assert_frame_equal(loaded.recommend({"i1": 5, "i2": 1}, {"gender": "M"}, k=3), top)


@pytest.mark.parametrize("replicas", [1, 4])
def test_threads_share_one_recommender(saved_dir, popular_ids, serve_data, replicas):
    """functional_call swaps module tensors in place: concurrent calls must not see each other's."""
    import torch
    from concurrent.futures import ThreadPoolExecutor

    rec = ColdStartRecommender.load(saved_dir, replicas=replicas)
    rng = np.random.default_rng(replicas)
    requests = [({popular_ids[j]: float(rng.integers(1, 6)) for j in rng.choice(40, 5, replace=False)},
                 serve_data.new_user(int(rng.integers(0, 50)))) for _ in range(120)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the service runs; results then match bit for bit
    try:
        sequential = [rec.recommend_records(r, u, k=10) for r, u in requests]
        with ThreadPoolExecutor(max_workers=12) as pool:
            concurrent = list(pool.map(lambda ru: rec.recommend_records(ru[0], ru[1], k=10), requests))
    finally:
        torch.set_num_threads(previous)
    assert concurrent == sequential


def test_a_folder_saved_without_a_panel_onboards_by_popularity(recommender, tmp_path):
    folder = recommender.save(tmp_path / "rec")
    (folder / "onboarding_panel.parquet").unlink()  # as written before the adaptive questionnaire
    loaded = ColdStartRecommender.load(folder)
    counts = pd.read_parquet(folder / "item_stats.parquet").set_index("item_id")["n_train_ratings"]
    first = loaded.onboarding_items(10)["item_id"].tolist()
    assert counts[first].tolist() == sorted(counts.to_numpy(), reverse=True)[:10]
    assert loaded.onboarding_items(5, shown=first)["item_id"].tolist() == loaded.onboarding_items(15)["item_id"].tolist()[10:]


@pytest.mark.parametrize("value", ["abc", float("nan"), float("inf"), True, "", None])
def test_finite_number_names_the_field(value):
    from metarec.serve.checks import finite_number

    with pytest.raises(DataError, match="user attribute 'age' must be a finite number") as caught:
        finite_number(value, "user attribute 'age'", "user.age")
    assert caught.value.field == "user.age"


def test_finite_number_reads_numbers_and_numeric_text():
    from metarec.serve.checks import finite_number

    assert [finite_number(v, "x", "x") for v in (30, 30.5, " 41 ", "1e1")] == [30.0, 30.5, 41.0, 10.0]


@pytest.mark.parametrize("name", ["{secret}", "../../{secret}", "{secret}.json"])
def test_a_run_folder_cannot_make_the_server_open_any_file(recommender, run_dir, tmp_path, monkeypatch, caplog, name):
    """A run's checkpoint names its dataset; a tampered one names a system file. It is never opened."""
    import shutil

    import metarec.data.loaders.registry as registry

    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for spec_path in run.glob("*/checkpoint.json"):
        spec = json.loads(spec_path.read_text())
        spec["run_config"]["data"] = {"dataset": name.format(secret=secret), "columns": {"user": "root"}}
        spec_path.write_text(json.dumps(spec))
    opened = []
    monkeypatch.setattr(registry, "load_data", lambda config: opened.append(config) or pytest.fail("opened"))
    with caplog.at_level("WARNING"):
        served = ColdStartRecommender.load(run, replicas=1)
    assert not opened and "secret-hash" not in caplog.text and "neither a known dataset nor a data table" in caplog.text
    assert len(served.recommend({served.checkpoint.item_vocab.ids[0]: 4}, k=3)) == 3  # ids only, still served


def test_categorical_values_take_numbers_only_where_the_codes_are_numbers():
    from metarec.serve.checks import categorical_value

    assert categorical_value(12, ("0", "1", "12"), "user attribute 'occupation'", "user.occupation") == 12
    assert categorical_value("F", ("F", "M"), "x", "user.gender") == "F"
    with pytest.raises(DataError, match=r"user attribute 'gender' takes one of 'F', 'M' \(text\), got 12345") as caught:
        categorical_value(12345, ("F", "M"), "user attribute 'gender'", "user.gender")
    assert caught.value.field == "user.gender"
    with pytest.raises(DataError):
        categorical_value(True, ("0", "1"), "x", "user.flag")
