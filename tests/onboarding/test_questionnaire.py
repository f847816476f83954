"""The adaptive onboarding questionnaire on a panel where the right next question is known."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.onboarding.questionnaire import NEVER, AdaptiveQuestionnaire, QuestionnaireConfig

EMPTY = np.zeros(0, np.int64)


def two_camps(mismatch: float = 0.1, round_size: int = 3) -> AdaptiveQuestionnaire:
    """12 items. Everyone knows item 0. Camp A (6 users) knows items 1-5, camp B (4 users) items 6-10;
    item 11 is askable but known to nobody. Training popularity breaks ties by camp size."""
    users, items = [], []
    for u in range(10):
        camp = range(1, 6) if u < 6 else range(6, 11)
        for i in (0, *camp):
            users.append(u)
            items.append(i)
    popularity = np.array([10, *[6] * 5, *[4] * 5, 0], np.float64)
    return AdaptiveQuestionnaire(np.array(users), np.array(items), 12, np.arange(12), popularity,
                                 QuestionnaireConfig(mismatch=mismatch, round_size=round_size, adaptive_items=12))


def test_first_round_is_the_panels_popularity():
    q = two_camps()
    assert q.next_items(EMPTY, EMPTY, 6).tolist() == [0, 1, 2, 3, 4, 5]
    p = q.answer_probability(np.zeros((1, 12), bool), np.zeros((1, 12), bool))[0]
    assert np.allclose(p[:12], [1.0, *[0.6] * 5, *[0.4] * 5, 0.0])


def test_a_user_who_knew_none_of_camp_a_is_asked_camp_b():
    q = two_camps()
    assert q.next_items(np.array([0, 1, 2]), np.array([0]), 3).tolist() == [6, 7, 8]
    # with the camp-A items answered, the rest of camp A comes next
    assert q.next_items(np.array([0, 1, 2]), np.array([0, 1, 2]), 3).tolist() == [3, 4, 5]
    # the posterior in closed form: A members disagree twice (items 1, 2 skipped), B members never
    p = q.answer_probability(np.isin(np.arange(12), [0, 1, 2])[None], np.isin(np.arange(12), [0])[None])[0]
    w_a, w_b = 6 * 0.1 ** 2, 4 * 1.0
    assert p[6] == pytest.approx(w_b / (w_a + w_b)) and p[3] == pytest.approx(w_a / (w_a + w_b))


def test_shown_and_rated_items_are_never_asked_again():
    q = two_camps()
    nxt = q.next_items(np.array([0, 6]), np.array([6]), 12)
    assert not set(nxt.tolist()) & {0, 6} and len(nxt) == 10
    # a rated item counts as shown even when the client forgot to list it
    assert 7 not in q.next_items(EMPTY, np.array([7]), 12).tolist()


def test_mismatch_one_never_adapts():
    q = two_camps(mismatch=1.0)
    assert q.next_items(np.array([0, 1, 2]), np.array([0]), 3).tolist() == [3, 4, 5]


def test_positions_replay_next_items_round_by_round():
    """The offline simulation asks every user exactly what serving would ask them."""
    q = two_camps(round_size=3)
    pools = np.zeros((3, 12), bool)
    pools[0, [0, 1, 2, 3]] = True  # camp A newcomer
    pools[1, [0, 7, 9]] = True  # camp B newcomer
    pools[2, [11]] = True  # knows only the unknown item
    position = q.positions(pools)
    for t in range(3):
        shown: list[int] = []
        while len(shown) < 12:
            answered = np.array([i for i in shown if pools[t, i]], np.int64)
            nxt = q.next_items(np.array(shown, np.int64), answered, 3)
            assert position[t, nxt].tolist() == list(range(len(shown), len(shown) + len(nxt)))
            shown += nxt.tolist()
        assert sorted(position[t].tolist()) == list(range(12))
    assert position[1, [6, 7, 8]].tolist() == [3, 4, 5]  # B newcomer: camp B right after the first round


def test_past_the_adaptive_items_serving_follows_the_panels_popularity_like_the_simulation():
    q = AdaptiveQuestionnaire(*two_camps().knows.nonzero(), 12, np.arange(12), two_camps().popularity,
                              QuestionnaireConfig(mismatch=0.1, round_size=3, adaptive_items=3))
    # after 3 items shown the answers no longer matter: camp A (the panel's more popular) comes first
    assert q.next_items(np.array([0, 6, 7]), np.array([6, 7]), 3).tolist() == [1, 2, 3]
    pools = np.zeros((1, 12), bool)
    pools[0, [0, 7, 9]] = True
    position = q.positions(pools)
    shown: list[int] = []
    while len(shown) < 12:
        answered = np.array([i for i in shown if pools[0, i]], np.int64)
        nxt = q.next_items(np.array(shown, np.int64), answered, 3)
        assert position[0, nxt].tolist() == list(range(len(shown), len(shown) + len(nxt)))
        shown += nxt.tolist()


def test_only_askable_items_are_asked_and_the_tail_follows_popularity():
    q = AdaptiveQuestionnaire(np.array([0, 0, 1]), np.array([0, 1, 1]), 4, np.array([0, 1, 3]),
                              np.array([1.0, 2.0, 5.0, 0.0]), QuestionnaireConfig(round_size=1, adaptive_items=1))
    assert 2 not in q.next_items(EMPTY, EMPTY, 4).tolist()
    position = q.positions(np.zeros((1, 4), bool))
    assert position[0, 2] == NEVER and position[0, [1, 0, 3]].tolist() == [0, 1, 2]


def test_a_big_panel_is_subsampled_the_same_way_every_time():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(50), 4)
    items = rng.integers(0, 20, len(users))
    config = QuestionnaireConfig(max_panel_users=10)
    a = AdaptiveQuestionnaire(users, items, 20, np.arange(20), np.ones(20), config)
    b = AdaptiveQuestionnaire(users[::-1], items[::-1], 20, np.arange(20), np.ones(20), config)
    assert a.n_members == 10 and (a.knows != b.knows).nnz == 0
    assert AdaptiveQuestionnaire(users, items, 20, np.arange(20), np.ones(20)).n_members == 50


def test_bad_arguments():
    with pytest.raises(ValueError, match="mismatch"):
        QuestionnaireConfig(mismatch=0.0)
    with pytest.raises(ValueError, match="round_size"):
        QuestionnaireConfig(round_size=0)
    with pytest.raises(ValueError, match="max_panel_users"):
        QuestionnaireConfig(max_panel_users=0)
    with pytest.raises(ValueError, match="popularity"):
        AdaptiveQuestionnaire(np.array([0]), np.array([0]), 3, np.arange(3), np.ones(2))
    with pytest.raises(ValueError, match="item indices"):
        AdaptiveQuestionnaire(np.array([0]), np.array([3]), 3, np.arange(3), np.ones(3))
    with pytest.raises(ValueError, match="n must be"):
        two_camps().next_items(EMPTY, EMPTY, -1)
