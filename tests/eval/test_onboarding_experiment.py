"""Known-answer checks of the onboarding protocol: who answers what, how many items are shown, that a
query item is never asked-and-answered, and that a user with no answer gets the unadapted model."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.eval.onboarding_experiment import (
    onboarding_experiment, per_user_scores, pool_results, positions_from_order, random_positions, simulate, summarise,
)
from metarec.onboarding.catalogue import trained_catalogue
from metarec.onboarding.strategies import STRATEGIES, strategy_order
from metarec.tasks import TaskSet

NEVER = np.iinfo(np.int64).max


def tasks_of(supports: list[list[int]], queries: list[list[int]]) -> TaskSet:
    """A hand-built TaskSet: ratings are 1 + item % 5 (their values do not matter to the protocol)."""
    s_items = np.array([i for s in supports for i in s], np.int64)
    q_items = np.array([i for q in queries for i in q], np.int64)
    return TaskSet("t", np.arange(len(supports), dtype=np.int64),
                   np.r_[0, np.cumsum([len(s) for s in supports])].astype(np.int64), s_items,
                   (1 + s_items % 5).astype(np.float32),
                   np.r_[0, np.cumsum([len(q) for q in queries])].astype(np.int64), q_items,
                   (1 + q_items % 5).astype(np.float32))


def support_sets(tasks: TaskSet) -> list[set[int]]:
    return [set(tasks.support_of(t)[0].tolist()) for t in range(len(tasks))]


# ---------------------------------------------------------------------- the protocol on hand-built tasks
def test_shown_budget_answers_exactly_the_known_shown_items():
    # questionnaire over a catalogue of 6 items (ids 0..5), shown in the order 5, 4, 3, 2, 1, 0
    order = np.array([5, 4, 3, 2, 1, 0])
    position = positions_from_order(order, n_items=8)  # items 6, 7 are outside the catalogue
    tasks = tasks_of([[0, 4, 6], [5, 3, 7, 1], [6, 7]], [[2], [0], [5]])
    q = simulate(tasks, position, budget=3, protocol="shown")
    assert support_sets(q.tasks) == [{4}, {5, 3}, set()]
    assert q.answers.tolist() == [1, 2, 0]
    assert q.shown.tolist() == [3, 3, 3]
    q = simulate(tasks, position, budget=100, protocol="shown")
    assert support_sets(q.tasks) == [{0, 4}, {5, 3, 1}, set()]
    assert q.shown.tolist() == [6, 6, 6]  # never more than the catalogue
    # queries are untouched
    assert np.array_equal(q.tasks.query_item, tasks.query_item)


def test_walk_stops_at_n_answers_and_reports_the_effort():
    order = np.array([5, 4, 3, 2, 1, 0])
    position = positions_from_order(order, n_items=8)
    tasks = tasks_of([[0, 4, 2], [5, 3, 7, 1], [6, 7]], [[9 % 8], [0], [5]])
    q = simulate(tasks, position, budget=2, protocol="walk")
    assert support_sets(q.tasks) == [{4, 2}, {5, 3}, set()]
    # task 0: answers at positions 1 and 3 -> shown 4 items; task 1: positions 0, 2 -> 3; task 2: the catalogue
    assert q.shown.tolist() == [4, 3, 6]
    q = simulate(tasks, position, budget=5, protocol="walk")
    assert q.answers.tolist() == [3, 3, 0]
    assert q.shown.tolist() == [6, 6, 6]


def test_a_query_item_is_never_answered_even_when_shown_and_in_the_pool():
    # a dirty task whose support repeats a query item: shown first, it must still not be answered
    position = positions_from_order(np.array([2, 0, 1]), n_items=3)
    tasks = tasks_of([[2, 0, 1]], [[2]])
    for protocol in ("shown", "walk"):
        q = simulate(tasks, position, budget=2, protocol=protocol)
        assert 2 not in support_sets(q.tasks)[0]
    assert support_sets(simulate(tasks, position, 2, "shown").tasks) == [{0}]
    assert support_sets(simulate(tasks, position, 2, "walk").tasks) == [{0, 1}]


def test_random_positions_are_a_fresh_permutation_of_the_catalogue_per_user():
    catalogue = np.array([1, 4, 5, 9, 10])
    pos = random_positions(catalogue, n_items=12, n_tasks=50, seed=3)
    assert pos.shape == (50, 12)
    outside = np.setdiff1d(np.arange(12), catalogue)
    assert (pos[:, outside] == NEVER).all()
    for row in pos:
        assert sorted(row[catalogue].tolist()) == list(range(len(catalogue)))
    assert len({tuple(row[catalogue]) for row in pos}) > 10  # not one order for everybody
    assert np.array_equal(pos, random_positions(catalogue, 12, 50, seed=3))
    assert not np.array_equal(pos, random_positions(catalogue, 12, 50, seed=4))


# ---------------------------------------------------------------------- on a tiny trained split
def test_answers_come_from_the_pool_and_the_shown_items_only(tiny_trained):
    split, learner = tiny_trained
    tasks = split.test["new_users"]
    order = strategy_order("pop-entropy", split, learner)
    position = positions_from_order(order, split.dataset.n_items)
    for budget in (1, 5, 20):
        q = simulate(tasks, position, budget, "shown")
        shown = set(order[:budget].tolist())
        for t in range(len(tasks)):
            pool = set(tasks.support_of(t)[0].tolist())
            answered = set(q.tasks.support_of(t)[0].tolist())
            assert answered == pool & shown
            assert not answered & set(tasks.query_of(t)[0].tolist())
        assert q.answers.sum() == sum(len(set(tasks.support_of(t)[0].tolist()) & shown) for t in range(len(tasks)))


def test_no_answer_means_the_unadapted_model(tiny_trained):
    split, learner = tiny_trained
    tasks = split.test["new_users"]
    nobody = simulate(tasks, positions_from_order(trained_catalogue(split), split.dataset.n_items), 0, "shown")
    assert nobody.answers.sum() == 0
    candidates = np.arange(split.dataset.n_items)
    none = per_user_scores(learner, nobody.tasks, candidates)
    unadapted = per_user_scores(learner, tasks, candidates, steps=0)
    assert np.allclose(none["mae"], unadapted["mae"], atol=1e-5)
    adapted = per_user_scores(learner, tasks, candidates)
    assert not np.allclose(adapted["mae"], unadapted["mae"], atol=1e-5)  # adaptation does something


def test_experiment_rows_and_summary(tiny_trained):
    split, learner = tiny_trained
    result = onboarding_experiment(learner, split, budgets=(3, 10), seeds=(0, 1), validation=True)
    rows = result.rows
    assert len(rows) == (len(STRATEGIES) - 1) * 2 + 2 * 2
    assert set(rows.loc[rows["strategy"] == "random", "seed"]) == {0, 1}
    assert (rows["users"] == len(split.validation["new_users"])).all()
    assert (rows["mean_shown"] <= rows["budget"]).all()
    more = rows.pivot_table(index=["strategy", "seed"], columns="budget", values="mean_answers")
    assert (more[10] >= more[3]).all()  # showing more items never yields fewer answers
    assert rows[["mae", "rmse"]].notna().all().all()
    summary = summarise(result)
    assert len(summary) == len(STRATEGIES) * 2
    popular = summary[(summary["strategy"] == "popular") & (summary["budget"] == 10)].iloc[0]
    low, high = popular["mae_vs_random_ci"]
    assert low <= popular["mae_vs_random"] <= high


def test_pooled_experiments_bootstrap_over_every_user(tiny_trained):
    split, learner = tiny_trained
    one = onboarding_experiment(learner, split, budgets=(5,), strategies=("random", "popular"), seeds=(0,))
    two = onboarding_experiment(learner, split, budgets=(5,), strategies=("random", "popular"), seeds=(1,))
    two.per_user = {(s, b, 0): v for (s, b, _), v in two.per_user.items()}  # another random draw, as another split
    pooled = pool_results([one, two])
    n_one = n_two = len(split.test["new_users"])
    assert len(pooled.per_user[("popular", 5, 0)]) == n_one + n_two
    row = summarise(pooled).set_index("strategy").loc["popular"]
    diff = np.r_[(one.per_user[("popular", 5, 0)]["mae"] - one.per_user[("random", 5, 0)]["mae"]).to_numpy(),
                 (two.per_user[("popular", 5, 0)]["mae"] - two.per_user[("random", 5, 0)]["mae"]).to_numpy()]
    assert row["mae_vs_random"] == pytest.approx(diff.mean())
    with pytest.raises(ValueError, match="same runs"):
        pool_results([one, onboarding_experiment(learner, split, budgets=(3,), strategies=("popular",), seeds=(0,))])
    with pytest.raises(ValueError, match="same runs"):
        pool_results([one, onboarding_experiment(learner, split, budgets=(5,), strategies=("random", "popular"),
                                                 seeds=(0,), validation=True)])
