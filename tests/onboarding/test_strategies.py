"""The onboarding strategies: every fixed order is a permutation of the trained catalogue, the greedy and
coverage orders on hand-built cases with known answers, and the next round for one newcomer."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.errors import UnknownIdError
from metarec.onboarding.catalogue import item_indices, item_statistics, trained_catalogue
from metarec.onboarding.greedy import greedy_extend_order
from metarec.onboarding.strategies import (STRATEGIES, adaptive_questionnaire, check_strategies, coverage_order,
                                           next_round, strategy_order)


def test_strategy_orders_are_permutations_of_the_trained_catalogue(tiny_trained):
    split, learner = tiny_trained
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


def test_next_round_of_a_fixed_list_skips_what_was_shown(tiny_trained):
    split, learner = tiny_trained
    ids = split.dataset.item_vocab.ids
    order = [ids[int(i)] for i in strategy_order("popular", split)]
    assert next_round("popular", split, learner, 5) == order[:5]
    # shown or rated, an item is not asked again; the list goes on where the newcomer is
    assert next_round("popular", split, learner, 4, shown=order[:3], rated=[order[5]]) == [order[3], order[4], *order[6:8]]


def test_next_round_adaptive_follows_the_answers(tiny_trained):
    split, learner = tiny_trained
    ids = split.dataset.item_vocab.ids
    first = next_round("adaptive", split, learner, 10)
    questionnaire = adaptive_questionnaire(split)
    assert first == [ids[int(i)] for i in questionnaire.next_items(np.zeros(0, np.int64), np.zeros(0, np.int64), 10)]
    knew_none = next_round("adaptive", split, learner, 10, shown=first)
    knew_all = next_round("adaptive", split, learner, 10, shown=first, rated=first)
    assert not set(knew_none) & set(first) and not set(knew_all) & set(first)
    assert knew_none != knew_all  # what the newcomer knew changes what comes next


def test_next_round_rejects_unknown_ids_and_strategies(tiny_trained):
    split, learner = tiny_trained
    with pytest.raises(UnknownIdError, match="shown: unknown item id"):
        next_round("popular", split, learner, 3, shown=["no-such-item"])
    with pytest.raises(UnknownIdError, match="rated: unknown item id"):
        next_round("adaptive", split, learner, 3, rated=["nor-this"])
    with pytest.raises(ValueError, match="unknown onboarding strategy 'astrology'"):
        next_round("astrology", split, learner, 3)
    with pytest.raises(ValueError, match="no fixed order"):
        next_round("random", split, learner, 3)
    with pytest.raises(ValueError, match="unknown onboarding strategy 'x'"):
        check_strategies(["popular", "x", "y"])
    check_strategies(STRATEGIES)


def test_item_indices_reports_each_unknown_id_once(tiny_trained):
    vocab = tiny_trained[0].dataset.item_vocab
    index, unknown = item_indices(vocab, ["i3", "zz", 7, "i1", "zz"])
    assert index.tolist() == [vocab.index("i3"), vocab.index("i1")] and unknown == ["zz", "7"]
    index, unknown = item_indices(vocab, [])
    assert index.dtype == np.int64 and len(index) == 0 and unknown == []


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
