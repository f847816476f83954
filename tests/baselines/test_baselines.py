"""Baselines on data with a known structure: each one must recover what its model says it can."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from metarec.baselines import (
    Baseline,
    ContentBased,
    GlobalMean,
    ItemMean,
    MatrixFactorization,
    MatrixFactorizationConfig,
    MostPopular,
    UserItemBias,
    UserItemBiasConfig,
    default_baselines,
    item_design,
)
from metarec import linalg
from metarec.tasks import TaskSet


def rmse(model: Baseline, tasks: TaskSet) -> float:
    return float(np.sqrt(np.mean((model.predict(tasks) - tasks.query_rating) ** 2)))


# ---------------------------------------------------------------------- interface
def test_every_baseline_honours_the_interface(attribute_split):
    split = attribute_split
    low, high = split.dataset.rating_scale
    for model in default_baselines():
        assert isinstance(model, Baseline)
        assert model.fit(split) is model
        for name, tasks in split.test.items():
            pred = model.predict(tasks)
            assert pred.shape == tasks.query_item.shape, (model.name, name)
            assert np.isfinite(pred).all() and (pred >= low).all() and (pred <= high).all()
        # score_items on one task = that task's unclipped predictions (nothing is clipped on this wide scale)
        tasks = split.test["new_users"]
        t = 3
        one = model.score_items(tasks.support_of(t), tasks.query_of(t)[0])
        if model.name != "most_popular":
            q = slice(tasks.query_ptr[t], tasks.query_ptr[t + 1])
            np.testing.assert_allclose(one, model.predict(tasks)[q], rtol=1e-10, atol=1e-10)


def test_most_popular_scores_training_counts(attribute_split):
    model = MostPopular().fit(attribute_split)
    counts = np.bincount(attribute_split.train_ratings()["item_idx"], minlength=attribute_split.dataset.n_items)
    cands = np.arange(attribute_split.dataset.n_items)
    np.testing.assert_array_equal(model.score_items((np.zeros(0, int), np.zeros(0)), cands), counts)
    tasks = attribute_split.test["warm"]
    np.testing.assert_allclose(model.predict(tasks), GlobalMean().fit(attribute_split).predict(tasks))


def test_fit_never_reads_validation_or_test_ratings(attribute_split):
    split = attribute_split
    rng = np.random.default_rng(1)

    def scramble(ts: TaskSet) -> TaskSet:
        return replace(ts, support_rating=rng.permutation(ts.support_rating) + 1,
                       query_rating=rng.permutation(ts.query_rating) - 1, _packed={})

    scrambled = replace(split, validation={k: scramble(v) for k, v in split.validation.items()},
                        test={k: scramble(v) for k, v in split.test.items()}, _cache={})
    for a, b in zip(default_baselines(), default_baselines()):
        a.fit(split)
        b.fit(scrambled)
        for tasks in split.test.values():
            np.testing.assert_array_equal(a.predict(tasks), b.predict(tasks), err_msg=a.name)


# ---------------------------------------------------------------------- UserItemBias
def test_user_bias_recovered_from_five_ratings(additive_split):
    """r = 3 + b_u + b_i exactly: with a tiny ridge, 5 support ratings give b_u up to the model's one
    free constant (b_u + c, b_i - c), and the query ratings exactly."""
    split = additive_split.with_support_size(5)
    model = UserItemBias(UserItemBiasConfig(reg=1e-4, item_reg=1e-4, iterations=60)).fit(split)
    tasks = split.test["new_users"]
    assert len(tasks) > 50 and (tasks.support_sizes == 5).all()
    folded = model.fold_in(tasks)
    true = split.dataset.truth["b_u"][tasks.user_idx]
    offset = folded - true
    assert np.ptp(offset) < 1e-3  # the same constant for every user
    assert np.corrcoef(folded, true)[0, 1] > 0.9999
    assert np.abs(model.predict(tasks) - tasks.query_rating).max() < 1e-3


def test_user_bias_fold_in_closed_form(additive_split):
    model = UserItemBias().fit(additive_split)  # reg 5
    tasks = additive_split.test["new_users"]
    items, ratings = tasks.support_of(0)
    expected = np.sum(ratings - model.stats.global_mean - model.item_bias[items]) / (model.config.reg + len(items))
    assert model.fold_in(tasks)[0] == pytest.approx(expected)


# ---------------------------------------------------------------------- MatrixFactorization
def test_mf_fold_in_beats_biases_on_low_rank_data(rank2_split):
    uib = UserItemBias().fit(rank2_split)
    mf = MatrixFactorization().fit(rank2_split)
    tasks = rank2_split.test["new_users"]
    assert rmse(mf, tasks) < 0.5 * rmse(uib, tasks)
    five = rank2_split.with_support_size(5).test["new_users"]
    assert rmse(mf, five) < 0.85 * rmse(uib, five)
    assert rmse(mf, rank2_split.test["warm"]) < 0.3 * rmse(uib, rank2_split.test["warm"])


def test_batched_fold_in_equals_per_task_ridge(rank2_split):
    mf = MatrixFactorization(MatrixFactorizationConfig(factors=4)).fit(rank2_split)
    s = mf.stats
    for scenario in ("new_users", "new_items"):  # unknown users (prior 0) and known ones (trained prior)
        tasks = rank2_split.test[scenario]
        got = mf.fold_in(tasks)
        for t in range(0, len(tasks), 17):
            items, ratings = tasks.support_of(t)
            f = np.c_[np.ones(len(items)), mf.item_params[items, 1:]]
            y = ratings.astype(np.float64) - s.global_mean - mf.item_params[items, 0]
            prior = mf.user_params[tasks.user_idx[t]] if s.known_users[tasks.user_idx[t]] else np.zeros(f.shape[1])
            lam = np.diag(mf.penalty)
            want = np.linalg.solve(f.T @ f + lam, f.T @ y + lam @ prior)
            np.testing.assert_allclose(got[t], want, rtol=1e-8, atol=1e-10)


def test_known_user_without_support_gets_trained_parameters(rank2_split):
    mf = MatrixFactorization().fit(rank2_split)
    user = int(rank2_split.train_users[0])
    items = np.arange(10)
    scores = mf.score_items((np.zeros(0, np.int64), np.zeros(0)), items, user_idx=user)
    want = (mf.stats.global_mean + mf.user_params[user, 0] + mf.item_params[items, 0]
            + mf.item_params[items, 1:] @ mf.user_params[user, 1:])
    np.testing.assert_allclose(scores, want)
    anonymous = mf.score_items((np.zeros(0, np.int64), np.zeros(0)), items)
    np.testing.assert_allclose(anonymous, mf.stats.global_mean + mf.item_params[items, 0])


# ---------------------------------------------------------------------- new items from attributes
def test_attribute_paths_beat_item_mean_on_new_items(attribute_split):
    item_mean = ItemMean().fit(attribute_split)
    models = {
        "content": ContentBased().fit(attribute_split),
        "mf": MatrixFactorization().fit(attribute_split),
    }
    plain = UserItemBias().fit(attribute_split)
    with_attr = UserItemBias(UserItemBiasConfig(item_bias_from_attributes=True)).fit(attribute_split)
    for scenario in ("new_items", "new_users_new_items"):
        tasks = attribute_split.test[scenario]
        floor = rmse(item_mean, tasks)
        for name, model in models.items():
            assert rmse(model, tasks) < 0.8 * floor, (name, scenario)
        assert rmse(with_attr, tasks) < 0.85 * rmse(plain, tasks)


def test_attribute_design_layout(attribute_split):
    design = item_design(attribute_split)
    x = design.matrix
    assert sp.issparse(x) and x.shape[0] == attribute_split.dataset.n_items
    # one genre one-hot (weight 1) + tags averaged (weights sum to 1): every row sums to 2
    np.testing.assert_allclose(np.asarray(x.sum(axis=1)).ravel(), 2.0)
    assert "genre=A" in design.names and "tags=p" in design.names


# ---------------------------------------------------------------------- linear algebra
@pytest.mark.parametrize("path", ["primal", "dual", "lsmr"])
def test_ridge_fit_paths_agree(path, monkeypatch):
    rng = np.random.default_rng(0)
    x = sp.random(60, 40, density=0.1, random_state=1, format="csr")
    y = rng.normal(size=(60, 3))
    w = rng.uniform(0.5, 2.0, 60)
    if path == "dual":
        x, y, w = x[:30], y[:30], w[:30]  # p > n
    if path == "lsmr":
        monkeypatch.setattr(linalg, "_DENSE_GRAM_MAX", 10)
    intercept, coef = linalg.ridge_fit(x, y, reg=0.7, weights=w)
    dense = x.toarray()
    mean = (w @ y) / w.sum()
    want = np.linalg.solve(dense.T @ (w[:, None] * dense) + 0.7 * np.eye(dense.shape[1]), dense.T @ (w[:, None] * (y - mean)))
    np.testing.assert_allclose(intercept, mean)
    np.testing.assert_allclose(coef, want, rtol=1e-5, atol=1e-6)


def test_fold_in_is_batched(rank2_split):
    """Thousands of new users in one call give each user's own answer (one stacked solve; its speed is
    measured by benchmarks/, not asserted here)."""
    base = rank2_split.test["new_users"]
    reps = int(np.ceil(3000 / len(base)))
    big = TaskSet(
        "big", np.full(len(base) * reps, -1),
        np.r_[0, np.cumsum(np.tile(base.support_sizes, reps))], np.tile(base.support_item, reps),
        np.tile(base.support_rating, reps), np.r_[0, np.cumsum(np.tile(base.query_sizes, reps))],
        np.tile(base.query_item, reps), np.tile(base.query_rating, reps),
    )
    for model in (UserItemBias(), MatrixFactorization(), ContentBased()):
        model.fit(rank2_split)
        pred = model.predict(big)
        np.testing.assert_allclose(pred[: len(base.query_item)], model.predict(base))
