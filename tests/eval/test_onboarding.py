"""Known-answer checks of the onboarding protocol: who answers what, how many items are shown, that a
query item is never asked-and-answered, and that a user with no answer gets the unadapted model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.data.dataset import RatingDataset
from metarec.eval.onboarding import (
    STRATEGIES, coverage_order, greedy_extend_order, item_statistics, onboarding_experiment, per_user_scores, pool_results,
    positions_from_order, random_positions,
    simulate, strategy_order, summarise, trained_catalogue,
)
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer
from metarec.tasks import SplitConfig, make_split
from metarec.tasks.taskset import TaskSet

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
def tiny_dataset(seed: int = 0, n_users: int = 80, n_items: int = 60) -> RatingDataset:
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n_users)], "gender": rng.choice(["F", "M"], n_users)})
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)], "genre": rng.choice(["a", "b", "c"], n_items),
                          "year": rng.integers(1990, 2000, n_items).astype(float)})
    popularity = 1.0 / np.arange(1, n_items + 1)
    rows = []
    for u in range(n_users):
        for j in rng.choice(n_items, rng.integers(16, 40), replace=False, p=popularity / popularity.sum()):
            rows.append((f"u{u}", f"i{j}", float(rng.integers(1, 6)), 1_000_000 + len(rows)))
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return RatingDataset.from_frames("tiny", ratings, users, items, rating_scale=(1.0, 5.0),
                                     meta={"new_item_rule": {"release_year_from": 1998}})


@pytest.fixture(scope="module")
def trained():
    split = make_split(tiny_dataset(), SplitConfig(seed=0, test_user_fraction=0.25, val_user_fraction=0.2))
    cfg = RunConfig.preset("feature-mlp", "maml").override("train", epochs=2, patience=2)
    cfg = cfg.override("model", embedding_size=8, hidden=[16], item_id_embedding=True)
    trainer = Trainer(cfg, split=split)
    trainer.fit()
    return split, trainer.restore_best()


def test_strategy_orders_are_permutations_of_the_trained_catalogue(trained):
    split, learner = trained
    catalogue = trained_catalogue(split)
    assert len(catalogue) and not split.new_item_mask[catalogue].any()
    for strategy in STRATEGIES:
        if strategy == "random":
            continue
        order = strategy_order(strategy, split, learner)
        assert sorted(order.tolist()) == catalogue.tolist(), strategy
    count = item_statistics(split)["count"].to_numpy()
    assert np.all(np.diff(count[strategy_order("popular", split)]) <= 0)
    with pytest.raises(ValueError, match="unknown onboarding strategy"):
        strategy_order("astrology", split)


def test_answers_come_from_the_pool_and_the_shown_items_only(trained):
    split, learner = trained
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


def test_no_answer_means_the_unadapted_model(trained):
    split, learner = trained
    tasks = split.test["new_users"]
    nobody = simulate(tasks, positions_from_order(trained_catalogue(split), split.dataset.n_items), 0, "shown")
    assert nobody.answers.sum() == 0
    candidates = np.arange(split.dataset.n_items)
    none = per_user_scores(learner, nobody.tasks, candidates)
    unadapted = per_user_scores(learner, tasks, candidates, steps=0)
    assert np.allclose(none["mae"], unadapted["mae"], atol=1e-5)
    adapted = per_user_scores(learner, tasks, candidates)
    assert not np.allclose(adapted["mae"], unadapted["mae"], atol=1e-5)  # adaptation does something


def test_experiment_rows_and_summary(trained):
    split, learner = trained
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


# ---------------------------------------------------------------------- greedy-error (GreedyExtend)
def brute_force_greedy(x, penalty, user, item, residual, query, catalogue, steps):
    """The same greedy, by direct ridge solves per user and candidate: the reference for the vectorised one."""
    users = np.unique(user)

    def objective(asked):
        total = 0.0
        for u in users:
            mine = user == u
            answered = mine & ~query & np.isin(item, asked)
            gram = np.diag(penalty) + x[item[answered]].T @ x[item[answered]]
            delta = np.linalg.solve(gram, x[item[answered]].T @ residual[answered])
            q = mine & query
            total += np.mean((residual[q] - x[item[q]] @ delta) ** 2)
        return total / len(users)

    chosen: list[int] = []
    for _ in range(steps):
        left = [c for c in catalogue if c not in chosen]
        chosen.append(left[int(np.argmin([objective(chosen + [c]) for c in left]))])
    return chosen


def test_greedy_extend_equals_brute_force_ridge_solves():
    rng = np.random.default_rng(3)
    n_users, n_items, d = 25, 12, 3
    x = rng.normal(size=(n_items, d))
    user = np.repeat(np.arange(n_users), 8)
    item = np.concatenate([rng.choice(n_items, 8, replace=False) for _ in range(n_users)])
    taste = rng.normal(size=(n_users, d))
    residual = np.einsum("nd,nd->n", x[item], taste[user]) + rng.normal(0, 0.3, len(user))
    query = np.tile(np.arange(8) < 3, n_users)
    penalty = np.array([1.0, 2.0, 0.5])
    catalogue = np.arange(n_items)
    popularity = np.bincount(item, minlength=n_items).astype(float)
    order = greedy_extend_order(x, penalty, user, item, residual, catalogue, popularity, first=6, query=query)
    assert sorted(order.tolist()) == catalogue.tolist()
    assert order[:6].tolist() == brute_force_greedy(x, penalty, user, item, residual, query, catalogue, 6)


def test_greedy_extend_skips_a_popular_uninformative_item_and_a_redundant_one():
    # Design [taste a, taste b]. Item 0: every user rated it, residual 0 (tells nothing). Items 1 and 2:
    # the same direction a, rated by 80 % of users; item 3: direction b, rated by 60 %. Queries need both.
    rng = np.random.default_rng(0)
    n_users = 200
    a, b = rng.choice([-1.0, 1.0], n_users), rng.choice([-1.0, 1.0], n_users)
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    rows = []
    for u in range(n_users):
        rated = [0] + [1] * (rng.random() < 0.8) + [2] * (rng.random() < 0.8) + [3] * (rng.random() < 0.6)
        rows += [(u, i, False) for i in rated] + [(u, 4, True), (u, 5, True)]
    user, item, query = (np.array(col) for col in zip(*rows))
    residual = np.where(x[item, 0] > 0, a[user], 0.0) + np.where(x[item, 1] > 0, b[user], 0.0)
    popularity = np.bincount(item[~query], minlength=6).astype(float)
    order = greedy_extend_order(x, np.ones(2), user, item, residual, np.arange(4), popularity, first=3, query=query)
    assert order[0] in (1, 2) and order[1] == 3  # not the popular item 0, and b before a's duplicate
    assert order[3] == 0  # the uninformative item ends up last (picks stop gaining nothing, rest by popularity)


# ---------------------------------------------------------------------- coverage
def test_coverage_prefers_users_without_an_answer_yet():
    # item 0: users 0-5; item 1: users 0-4 (the same people); item 2: users 6-9 (nobody else knows it)
    pairs = [(u, 0) for u in range(6)] + [(u, 1) for u in range(5)] + [(u, 2) for u in range(6, 10)]
    user, item = (np.array(col) for col in zip(*pairs))
    popularity = np.array([6.0, 5.0, 4.0, 0.0])
    catalogue = np.arange(4)
    assert coverage_order(user, item, catalogue, popularity, decay=0.5).tolist() == [0, 2, 1, 3]
    # decay 1 is popularity: the same users' second answers count in full
    assert coverage_order(user, item, catalogue, popularity, decay=1.0).tolist() == [0, 1, 2, 3]
    # after `first` picks the rest follow popularity
    assert coverage_order(user, item, catalogue, popularity, decay=0.5, first=1).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="decay"):
        coverage_order(user, item, catalogue, popularity, decay=0.0)


def test_pooled_experiments_bootstrap_over_every_user(trained):
    split, learner = trained
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
