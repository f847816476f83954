"""The synthetic generator: determinism, shape of the data, and the ground truth it claims to have."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec.data import RatingDataset
from metarec.data.synthetic import (
    SyntheticConfig,
    SyntheticData,
    adaptation_gain_bound,
    integer_rating_moments,
    make_synthetic,
)
from metarec.errors import ConfigError


@pytest.fixture(scope="module")
def default() -> SyntheticData:
    return make_synthetic(SyntheticConfig())


@pytest.fixture(scope="module")
def default_bound(default: SyntheticData) -> dict[str, float]:
    return adaptation_gain_bound(default.truth)


def _r2(target: np.ndarray, prediction: np.ndarray) -> float:
    """Share of the (centred) variance of ``target`` that ``prediction`` explains."""
    target = target - target.mean(axis=0)
    return 1.0 - float(np.sum((target - prediction) ** 2) / np.sum(target ** 2))


# ---------------------------------------------------------------------------------------------- shape
def test_default_sizes_and_ids() -> None:
    data = make_synthetic(SyntheticConfig())
    ds, truth = data.dataset, data.truth
    assert (ds.n_users, ds.n_items) == (1000, 500)
    assert ds.user_vocab.ids[:3] == ("u0", "u1", "u2") and ds.user_vocab.ids[-1] == "u999"
    assert ds.item_vocab.ids[:3] == ("i0", "i1", "i2") and ds.item_vocab.ids[-1] == "i499"
    assert truth.user_factors.shape == (1000, 8) and truth.item_factors.shape == (500, 8)
    assert truth.user_bias.shape == (1000,) and truth.item_bias.shape == (500,)
    per_user = ds.ratings.groupby("user_idx").size()
    assert len(per_user) == 1000 and per_user.min() >= 15 and per_user.max() <= 80
    assert per_user.median() < per_user.mean()  # heavy tail: a few users rate a lot
    assert not ds.ratings.duplicated(["user_id", "item_id"]).any()
    assert set(ds.user_schema) == {"age_group", "region", "gender"}
    assert {k: v.kind for k, v in ds.item_schema.items()} == {
        "title": "text", "category": "categorical", "tags": "multi", "year": "numeric"}
    assert ds.users["age_group"].nunique() == 5 and ds.users["region"].nunique() == 8
    assert ds.users["gender"].nunique() == 2 and ds.items["category"].nunique() == 10
    n_tags = ds.items["tags"].map(len)
    assert n_tags.min() >= 1 and n_tags.max() <= 4
    assert len({t for tags in ds.items["tags"] for t in tags}) <= 30


def test_truth_rows_follow_dataset_rows(default: SyntheticData) -> None:
    r, truth = default.dataset.ratings, default.truth
    np.testing.assert_array_equal(r["user_idx"].to_numpy(), truth.rated_user)
    np.testing.assert_array_equal(r["item_idx"].to_numpy(), truth.rated_item)
    np.testing.assert_array_equal(r["timestamp"].to_numpy(dtype=np.int64), truth.rated_time)
    np.testing.assert_array_equal(r["rating"].to_numpy(dtype=np.float64), truth.rated_value)
    np.testing.assert_allclose(truth.user_attribute_part + truth.user_idiosyncratic_part, truth.user_factors)
    np.testing.assert_allclose(truth.user_bias_attribute_part + truth.user_bias_idiosyncratic_part, truth.user_bias)


def test_deterministic_in_seed() -> None:
    cfg = SyntheticConfig(n_users=300, n_items=200)
    a, b = make_synthetic(cfg).dataset, make_synthetic(cfg).dataset
    pd.testing.assert_frame_equal(a.ratings, b.ratings)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert dict(a.meta) == dict(b.meta)
    c = make_synthetic(dataclasses.replace(cfg, seed=1)).dataset
    assert not a.ratings[["item_id", "rating"]].equals(c.ratings[["item_id", "rating"]])


def test_ratings_are_integers_on_the_scale(default: SyntheticData) -> None:
    values = default.dataset.ratings["rating"].to_numpy()
    assert default.dataset.rating_scale == (1.0, 5.0)
    assert set(np.unique(values)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.2 < values.mean() < 3.9


def test_timestamps_increase_per_user_and_follow_release(default: SyntheticData) -> None:
    r = default.dataset.ratings
    ts = r["timestamp"].to_numpy(dtype=np.int64)
    assert r["timestamp"].notna().all()
    same_user = np.diff(r["user_idx"].to_numpy()) == 0
    assert (np.diff(ts)[same_user] > 0).all()  # rows grouped by user, strictly increasing in time
    released = default.truth.item_release_time[r["item_idx"].to_numpy()]
    assert (released <= ts).all()
    years = default.dataset.item_release_year()
    assert years is not None and years.min() >= 1990 and years.max() <= 2019


def test_meta_new_item_rule_and_roundtrip(default: SyntheticData, tmp_path: Path) -> None:
    ds = default.dataset
    year_from = ds.meta["new_item_rule"]["release_year_from"]
    newer = float((ds.item_release_year() >= year_from).mean())
    assert 0.15 <= newer <= 0.25
    new_items = ds.item_release_year()[ds.ratings["item_idx"].to_numpy()] >= year_from
    assert new_items.mean() > 0.05  # new items do get rated (people rate what just came out)
    assert ds.meta["synthetic"] == SyntheticConfig().to_dict()
    again = RatingDataset.load(ds.save(tmp_path / "synthetic"))
    pd.testing.assert_frame_equal(again.ratings, ds.ratings)
    assert dict(again.meta) == dict(ds.meta)


def test_popularity_skew(default: SyntheticData) -> None:
    counts = default.dataset.ratings.groupby("item_idx").size().sort_values(ascending=False)
    top = counts.iloc[: default.dataset.n_items // 10].sum()
    assert top / counts.sum() > 0.30
    flat = make_synthetic(SyntheticConfig(popularity_exponent=0.0)).dataset.ratings.groupby("item_idx").size()
    flat = flat.sort_values(ascending=False)
    assert flat.iloc[:50].sum() / flat.sum() < top / counts.sum()


def test_invalid_config_raises() -> None:
    with pytest.raises(ConfigError, match="user_attr_share must be in"):
        SyntheticConfig(user_attr_share=1.5)
    with pytest.raises(ConfigError, match="ratings_per_user must satisfy"):
        SyntheticConfig(ratings_per_user=(20, 10))
    with pytest.raises(ConfigError, match=r"release_years\[0\] < rating_years\[0\]"):
        SyntheticConfig(rating_years=(1980, 1990))


# ---------------------------------------------------------------------------------------------- truth
@pytest.mark.parametrize("share", [0.2, 0.5, 0.8])
def test_user_attributes_explain_their_share_of_taste(share: float) -> None:
    data = make_synthetic(SyntheticConfig(user_attr_share=share))
    truth, users = data.truth, data.dataset.users
    u = truth.user_factors
    assert _r2(u, truth.user_attribute_part) == pytest.approx(share, abs=0.03)
    # and the attributes in the *dataset* carry it: least squares on their one-hot codes
    onehot = pd.get_dummies(users[["age_group", "region", "gender"]]).to_numpy(dtype=np.float64)
    coef, *_ = np.linalg.lstsq(onehot, u - u.mean(axis=0), rcond=None)
    assert _r2(u, onehot @ coef) == pytest.approx(share, abs=0.05)
    b = truth.user_bias
    coef, *_ = np.linalg.lstsq(onehot, b - b.mean(), rcond=None)
    assert _r2(b, onehot @ coef) == pytest.approx(share, abs=0.08)


def test_item_attributes_predict_item_factors(default: SyntheticData) -> None:
    items = default.dataset.items
    tags = sorted({t for row in items["tags"] for t in row})
    tag_matrix = np.array([[t in row for t in tags] for row in items["tags"]], dtype=np.float64)
    x = np.hstack([pd.get_dummies(items["category"]).to_numpy(dtype=np.float64), tag_matrix,
                   ((items["year"] - items["year"].mean()) / items["year"].std()).to_numpy()[:, None]])
    v = default.truth.item_factors
    coef, *_ = np.linalg.lstsq(x, v - v.mean(axis=0), rcond=None)
    assert _r2(v, x @ coef) > 0.8  # 1 - item_noise_share = 0.9, less what the tag averaging loses


def test_expected_rating_is_what_ratings_are_drawn_from(default: SyntheticData) -> None:
    truth = default.truth
    score = truth.expected_rating(truth.rated_user, truth.rated_item, truth.rated_time)
    mean, _ = integer_rating_moments(score, truth.noise_std)
    assert abs(float(np.mean(truth.rated_value - mean))) < 0.02
    assert np.corrcoef(truth.rated_value, score)[0, 1] > 0.75
    # scalar call, no time: the mid-window taste (identical without drift)
    assert truth.expected_rating(3, 7) == pytest.approx(truth.expected_rating([3], [7], [truth.user_reference_time[3]])[0])


def test_integer_rating_moments_match_simulation() -> None:
    rng = np.random.default_rng(0)
    score = np.array([0.3, 1.2, 2.5, 3.49, 4.8, 6.0])
    mean, var = integer_rating_moments(score, 0.7)
    draws = np.clip(np.rint(score[:, None] + 0.7 * rng.standard_normal((len(score), 200_000))), 1, 5)
    np.testing.assert_allclose(mean, draws.mean(axis=1), atol=0.01)
    np.testing.assert_allclose(var, draws.var(axis=1), atol=0.01)
    exact, zero = integer_rating_moments(np.array([0.2, 2.4, 9.0]), 0.0)
    np.testing.assert_array_equal(exact, [1.0, 2.0, 5.0])
    np.testing.assert_array_equal(zero, 0.0)


# ---------------------------------------------------------------------------------------------- bounds
def test_bound_ordering_default(default_bound: dict[str, float]) -> None:
    b = default_bound
    assert b["oracle_rmse"] + 0.15 < b["attribute_rmse"] < b["global_mean_rmse"] - 0.15
    assert b["oracle_rmse"] < b["adapted_rmse"] < b["attribute_rmse"]
    assert 0.15 < b["gap_closed_by_adaptation"] < 0.6  # 5 ratings reveal a measurable part, not all
    # irreducible error: noise plus rounding, a bit less at the clipped ends
    assert b["noise_std"] < b["oracle_rmse"] < np.sqrt(b["noise_std"] ** 2 + 1 / 12) + 1e-9
    assert b["attribute_extra_mse"] == pytest.approx(b["attribute_extra_mse_theory"], rel=0.05)
    assert b["attribute_rmse_continuous"] ** 2 == pytest.approx(b["noise_std"] ** 2 + b["attribute_extra_mse"])


def test_bound_matches_simulated_ratings(default: SyntheticData) -> None:
    """The closed-form RMSEs are expectations over fresh rating noise: check against a simulation."""
    truth = default.truth
    b = adaptation_gain_bound(truth, support_size=0)
    u, i, t = truth.rated_user, truth.rated_item, truth.rated_time
    score = truth.expected_rating(u, i, t)
    oracle, _ = integer_rating_moments(score, truth.noise_std)
    attr, _ = integer_rating_moments(truth.attribute_rating(u, i),
                                     np.sqrt(truth.noise_std ** 2 + truth.attribute_uncertainty(u, i, t)))
    rng = np.random.default_rng(5)
    err = np.zeros(3)
    repeats = 20
    for _ in range(repeats):
        rating = np.clip(np.rint(score + truth.noise_std * rng.standard_normal(len(score))), 1, 5)
        err += [np.mean((rating - oracle) ** 2), np.mean((rating - attr) ** 2), np.mean((rating - rating.mean()) ** 2)]
    sim = np.sqrt(err / repeats)
    assert sim[0] == pytest.approx(b["oracle_rmse"], abs=0.005)
    assert sim[1] == pytest.approx(b["attribute_rmse"], abs=0.005)
    assert sim[2] == pytest.approx(b["global_mean_rmse"], abs=0.01)


def test_more_support_closes_more_of_the_gap(default: SyntheticData, default_bound: dict[str, float]) -> None:
    more = adaptation_gain_bound(default.truth, support_size=14)
    assert more["gap_closed_by_adaptation"] > default_bound["gap_closed_by_adaptation"] + 0.1
    subset = adaptation_gain_bound(default.truth, users=np.arange(100))
    assert subset["n_users"] == 100 and subset["n_pairs"] < default_bound["n_pairs"]


def test_full_attribute_share_leaves_only_noise() -> None:
    truth = make_synthetic(SyntheticConfig(user_attr_share=1.0)).truth
    assert np.all(truth.user_idiosyncratic_part == 0) and np.all(truth.user_bias_idiosyncratic_part == 0)
    b = adaptation_gain_bound(truth)
    assert b["attribute_extra_mse"] == pytest.approx(0.0, abs=1e-12)
    assert b["attribute_rmse"] == pytest.approx(b["oracle_rmse"], abs=1e-9)
    assert b["adapted_rmse"] == pytest.approx(b["oracle_rmse"], abs=1e-3)
    assert b["attribute_rmse_continuous"] == pytest.approx(b["noise_std"])


def test_drift_moves_late_ratings_toward_the_drift_direction() -> None:
    moving = make_synthetic(SyntheticConfig(drift=1.0)).truth
    still = make_synthetic(SyntheticConfig(drift=0.0)).truth
    # same seed: same pairs and times, only the scores move
    np.testing.assert_array_equal(moving.rated_item, still.rated_item)
    np.testing.assert_array_equal(moving.rated_time, still.rated_time)
    assert np.all(still.user_drift == 0)
    u, i, t = moving.rated_user, moving.rated_item, moving.rated_time
    delta = moving.expected_rating(u, i, t) - moving.expected_rating(u, i)
    assert np.corrcoef(moving.rated_value - still.rated_value, delta)[0, 1] > 0.4
    # per user: items along the drift direction are rated higher late than early, the others lower
    static, _ = integer_rating_moments(moving.expected_rating(u, i), moving.noise_std)
    toward = np.sum(moving.user_drift[u] * moving.item_factors[i], axis=1) > 0
    late = t > moving.user_reference_time[u]

    def late_minus_early(values: np.ndarray, side: np.ndarray) -> float:
        res = values - static
        return float(res[late & side].mean() - res[~late & side].mean())

    assert late_minus_early(moving.rated_value, toward) > 0.15
    assert late_minus_early(moving.rated_value, ~toward) < -0.15
    assert abs(late_minus_early(still.rated_value, toward)) < 0.05
    # what attributes cannot see grows by the drift term
    assert adaptation_gain_bound(moving)["attribute_rmse"] > adaptation_gain_bound(still)["attribute_rmse"]
