"""The item-side fold-in of the baselines (``with_new_items``): items released after training learnt from
the support ratings test users give them. Known answers on data whose item effects are known, and the
rule that a task's query ratings never enter."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.baselines import (ItemMean, ItemMeanConfig, MatrixFactorization, MostPopular, UserItemBias,
                               UserItemBiasConfig)
from metarec.tasks.taskset import TaskSet, new_item_rows


def mae(model, tasks: TaskSet) -> float:
    return float(np.abs(model.predict(tasks) - tasks.query_rating).mean())


def with_query_ratings(tasks: TaskSet, ratings: np.ndarray) -> TaskSet:
    return TaskSet(tasks.name, tasks.user_idx, tasks.support_ptr, tasks.support_item, tasks.support_rating,
                   tasks.query_ptr, tasks.query_item, ratings.astype(np.float32))


def test_new_item_rows_are_the_support_ratings_of_unseen_items(additive_split):
    tasks = additive_split.test["new_items"]
    known = ItemMean().fit(additive_split).stats.known_items
    task, item, rating = new_item_rows(tasks, known)
    assert len(item) == tasks.support_sizes.sum() > 0  # every support item of this scenario is new
    assert not known[item].any()
    t = int(task[5])
    items, ratings = tasks.support_of(t)
    assert item[5] in items and rating[5] in ratings.astype(np.float64)


def test_item_mean_of_new_items_is_the_damped_pooled_mean(additive_split):
    model = ItemMean(ItemMeanConfig(damping=5.0)).fit(additive_split)
    tasks = additive_split.test["new_items"]
    pooled = model.with_new_items(tasks, scale=2.0)  # damping 10
    _, item, rating = new_item_rows(tasks, model.stats.known_items)
    v = int(item[0])
    want = (rating[item == v].sum() + 10.0 * model.stats.global_mean) / ((item == v).sum() + 10.0)
    assert pooled.item_mean[v] == pytest.approx(want)
    assert model.item_mean[v] == pytest.approx(model.stats.global_mean)  # the original is untouched
    known = model.stats.known_items
    np.testing.assert_array_equal(pooled.item_mean[known], model.item_mean[known])


def test_bias_fold_in_recovers_new_items_biases(additive_split):
    """r = 3 + b_u + b_i exactly: with a light penalty the pooled support ratings give each new item its
    true bias (up to the shared offset every bias model has), and the query error collapses."""
    model = UserItemBias(UserItemBiasConfig(item_reg=0.5, reg=0.5, item_bias_from_attributes=True)).fit(additive_split)
    tasks = additive_split.test["new_items"]
    pooled = model.with_new_items(tasks, scale=0.01, rounds=10)
    rows = np.unique(new_item_rows(tasks, model.stats.known_items)[1])
    truth = additive_split.dataset.truth["b_i"][rows]
    got = pooled.item_bias[rows]
    assert np.corrcoef(got, truth)[0, 1] > 0.99
    assert mae(pooled, tasks) < 0.25 * mae(model, tasks)
    np.testing.assert_array_equal(pooled.item_bias[model.stats.known_items], model.item_bias[model.stats.known_items])


def test_mf_fold_in_of_new_items_beats_attributes_alone(rank2_split):
    model = MatrixFactorization().fit(rank2_split)
    # both new is harder: the raters' own factors come from their few support ratings too
    for scenario, ratio in (("new_items", 0.6), ("new_users_new_items", 0.75)):
        tasks = rank2_split.test[scenario]
        pooled = model.with_new_items(tasks)
        assert mae(pooled, tasks) < ratio * mae(model, tasks), scenario
    known = model.stats.known_items
    np.testing.assert_array_equal(pooled.item_params[known], model.item_params[known])


def test_mf_item_step_is_the_ridge_solution(rank2_split):
    """One round: each new item's (b_i, q_i) solves the ridge problem on its raters' folded-in users."""
    model = MatrixFactorization().fit(rank2_split)
    tasks = rank2_split.test["new_items"]
    pooled = model.with_new_items(tasks, scale=0.5, rounds=1)
    users = model.fold_in(tasks)
    task, item, rating = new_item_rows(tasks, model.stats.known_items)
    lam = np.diag(model.penalty * 0.5)
    for v in np.unique(item)[:5]:
        at = item == v
        f = np.c_[np.ones(at.sum()), users[task[at], 1:]]
        y = rating[at] - model.stats.global_mean - users[task[at], 0]
        want = np.linalg.solve(f.T @ f + lam, f.T @ y + lam @ model.item_params[v])
        np.testing.assert_allclose(pooled.item_params[v], want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("make", [lambda: MatrixFactorization(), lambda: UserItemBias(), lambda: ItemMean()])
def test_query_ratings_never_enter_the_item_fold_in(rank2_split, make):
    model = make().fit(rank2_split)
    tasks = rank2_split.test["new_items"]
    shuffled = with_query_ratings(tasks, np.random.default_rng(0).uniform(-9, 9, len(tasks.query_rating)))
    np.testing.assert_array_equal(model.with_new_items(tasks).predict(tasks),
                                  model.with_new_items(shuffled).predict(tasks))


def test_most_popular_counts_pooled_ratings_of_new_items(additive_split):
    model = MostPopular().fit(additive_split)
    tasks = additive_split.test["new_items"]
    _, item, _ = new_item_rows(tasks, model.stats.known_items)
    pooled = model.with_new_items(tasks)
    np.testing.assert_array_equal(pooled.popularity, model.popularity + np.bincount(item, minlength=len(model.popularity)))
