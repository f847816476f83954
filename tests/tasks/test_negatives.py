"""Negative sampling: never a task's own item, the right counts, distinct, seeded, and by the weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from metarec.errors import ConfigError
from metarec.tasks import negatives, sample_negatives, with_negatives
from metarec.tasks.taskset import TaskSet

N_ITEMS = 400


def _random_tasks(n_tasks: int = 3000, seed: int = 0, n_items: int = N_ITEMS) -> TaskSet:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, n_tasks)
    user = np.repeat(rng.permutation(10 * n_tasks)[:n_tasks], sizes)
    popular = 1.0 / np.arange(1, n_items + 1)  # tasks favour the head, as real users do
    item = np.concatenate([rng.choice(n_items, s, replace=False, p=popular / popular.sum()) for s in sizes])
    rating = rng.integers(1, 6, len(item)).astype(np.float32)
    return TaskSet.from_rows("r", user, item, rating, rng.random(len(item)) < 0.3)


def _own_keys(tasks: TaskSet, n_items: int = N_ITEMS) -> np.ndarray:
    rows = tasks.rows()
    return rows["task"] * n_items + rows["item_idx"]


def _check(tasks: TaskSet, task: np.ndarray, item: np.ndarray, want: np.ndarray, n_items: int = N_ITEMS) -> None:
    key = task * n_items + item
    assert not np.isin(key, _own_keys(tasks, n_items)).any()  # never a support or query item of its task
    assert len(np.unique(key)) == len(key)  # distinct within a task
    assert np.all(np.diff(task) >= 0)  # sorted by task
    assert np.bincount(task, minlength=len(tasks)).tolist() == want.tolist()


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_never_a_task_item_right_counts_distinct(sampler: str) -> None:
    tasks = _random_tasks()
    rng = np.random.default_rng(1)
    popularity = np.bincount(tasks.rows()["item_idx"], minlength=N_ITEMS) ** 0.75 if sampler == "popularity" else None
    want = rng.integers(0, 80, len(tasks))  # some tasks ask for a good share of what is left
    task, item = sample_negatives(tasks, N_ITEMS, want, np.random.default_rng(2), popularity=popularity)
    _check(tasks, task, item, want)
    if popularity is not None:
        assert popularity[item].min() > 0  # a zero weight (an item nobody rated) is never drawn


def test_tasks_left_after_the_rejection_rounds_are_drawn_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(negatives, "MAX_ROUNDS", 1)
    tasks = _random_tasks(1000)
    want = np.random.default_rng(1).integers(0, 200, len(tasks))
    task, item = sample_negatives(tasks, N_ITEMS, want, np.random.default_rng(2))
    _check(tasks, task, item, want)


def test_seeded_and_reproducible() -> None:
    tasks = _random_tasks(500)
    a = sample_negatives(tasks, N_ITEMS, 20, np.random.default_rng(7))
    b = sample_negatives(tasks, N_ITEMS, 20, np.random.default_rng(7))
    c = sample_negatives(tasks, N_ITEMS, 20, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def _one_item_tasks(n_tasks: int, item: int = 0) -> TaskSet:
    """Tasks whose only item is ``item`` (in the query), so each draw is over every other item."""
    user = np.arange(n_tasks)
    return TaskSet.from_rows("one", user, np.full(n_tasks, item), np.ones(n_tasks), np.ones(n_tasks, bool))


def _chi2(observed: np.ndarray, weights: np.ndarray) -> tuple[float, int]:
    expected = observed.sum() * weights / weights.sum()
    return float(((observed - expected) ** 2 / expected).sum()), len(weights) - 1


@pytest.mark.parametrize("heavy_forbidden", [False, True])
def test_popularity_sampling_follows_the_weights(heavy_forbidden: bool) -> None:
    # heavy_forbidden: the task's own item holds 99.9% of the weight, so the exact (non-rejection) draw is used
    n_items = 50
    weights = np.linspace(1.0, 10.0, n_items)
    weights[0] = 50_000.0 if heavy_forbidden else weights[0]
    tasks = _one_item_tasks(40_000)
    task, item = sample_negatives(tasks, n_items, 1, np.random.default_rng(3), popularity=weights)
    assert len(task) == 40_000 and not (item == 0).any()
    stat, df = _chi2(np.bincount(item, minlength=n_items)[1:], weights[1:])
    assert stat < df + 6 * np.sqrt(2 * df)  # loose: a p-value far below 1e-6 would fail
    # and not uniform: the heaviest item is drawn about ten times as often as the lightest
    counts = np.bincount(item, minlength=n_items)
    assert 6 < counts[-1] / counts[1] < 14


@pytest.mark.parametrize("rounds", [None, 0])
def test_successive_draws_without_replacement_follow_the_weights(rounds: int | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # two negatives per task from {1, 2, 3} with weights 1, 2, 7: P(item 1 is left out) = P(draw 2 then 3)
    # + P(3 then 2) = 2/10 * 7/8 + 7/10 * 2/3; rounds=0: no rejection round, every task drawn exactly
    if rounds is not None:
        monkeypatch.setattr(negatives, "MAX_ROUNDS", rounds)
    tasks = _one_item_tasks(30_000)
    weights = np.array([5.0, 1.0, 2.0, 7.0])
    task, item = sample_negatives(tasks, 4, 2, np.random.default_rng(4), popularity=weights)
    left_out_1 = 1 - np.bincount(task[item == 1], minlength=len(tasks)).mean()
    assert abs(left_out_1 - (0.2 * 7 / 8 + 0.7 * 2 / 3)) < 0.015


def test_candidates_mask_uniform() -> None:
    mask = np.zeros(N_ITEMS, bool)
    mask[100:200] = True
    tasks = _one_item_tasks(20_000, item=150)
    task, item = sample_negatives(tasks, N_ITEMS, 3, np.random.default_rng(5), candidates=mask)
    assert mask[item].all() and not (item == 150).any() and len(item) == 60_000
    weights = mask.astype(float)
    weights[150] = 0
    stat, df = _chi2(np.bincount(item, minlength=N_ITEMS)[weights > 0], weights[weights > 0])
    assert stat < df + 6 * np.sqrt(2 * df)


def test_a_task_short_of_candidates_gets_all_of_them(caplog: pytest.LogCaptureFixture) -> None:
    mask = np.zeros(N_ITEMS, bool)
    mask[[3, 5, 8, 13, 21]] = True
    # task 0 holds items 3 and 5 (candidates) and 6; task 1 holds 100 only; task 2 holds every candidate
    tasks = TaskSet.from_rows("short", np.array([0, 0, 0, 1, 2, 2, 2, 2, 2]),
                              np.array([3, 5, 6, 100, 3, 5, 8, 13, 21]), np.ones(9), np.zeros(9, bool))
    with caplog.at_level(logging.WARNING, logger="metarec.tasks.negatives"):
        task, item = sample_negatives(tasks, N_ITEMS, 4, np.random.default_rng(0), candidates=mask)
    assert sorted(item[task == 0].tolist()) == [8, 13, 21]
    assert len(item[task == 1]) == 4 and set(item[task == 1]) <= {3, 5, 8, 13, 21}
    assert not (task == 2).any()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert "2 of 3 tasks" in caplog.text


def test_with_negatives_appends_zero_rated_negatives() -> None:
    tasks = _random_tasks(800)
    prior = np.random.default_rng(9).random(len(tasks.support_item)) < 0.5
    tasks = TaskSet(tasks.name, tasks.user_idx, tasks.support_ptr, tasks.support_item, tasks.support_rating,
                    tasks.query_ptr, tasks.query_item, tasks.query_rating, prior)
    new = with_negatives(tasks, N_ITEMS, np.random.default_rng(0), query_ratio=2.5, support_ratio=0.5)
    assert new.user_idx.tolist() == tasks.user_idx.tolist()
    q_neg = np.where(tasks.query_sizes > 0, np.maximum(np.floor(2.5 * tasks.query_sizes + 0.5), 1), 0)
    s_neg = np.where(tasks.support_sizes > 0, np.maximum(np.floor(0.5 * tasks.support_sizes + 0.5), 1), 0)
    assert (new.query_sizes == tasks.query_sizes + q_neg).all()
    assert (new.support_sizes == tasks.support_sizes + s_neg).all()
    for t in range(len(tasks)):
        q_item, q_rating = new.query_of(t)
        s_item, s_rating = new.support_of(t)
        nq, ns = tasks.query_sizes[t], tasks.support_sizes[t]
        assert np.array_equal(q_item[:nq], tasks.query_of(t)[0]) and np.array_equal(q_rating[:nq], tasks.query_of(t)[1])
        assert np.array_equal(s_item[:ns], tasks.support_of(t)[0])
        assert np.array_equal(s_rating[:ns], tasks.support_of(t)[1])
        assert (q_rating[nq:] == 0).all() and (s_rating[ns:] == 0).all()
        positives = set(q_item[:nq]) | set(s_item[:ns])
        negatives = [*q_item[nq:], *s_item[ns:]]
        assert len(set(negatives)) == len(negatives) and not positives & set(negatives)
        flags = new.support_prior[new.support_ptr[t]:new.support_ptr[t + 1]]
        assert np.array_equal(flags[:ns], prior[tasks.support_ptr[t]:tasks.support_ptr[t + 1]]) and not flags[ns:].any()

    default = with_negatives(tasks, N_ITEMS, np.random.default_rng(0))  # 4 per query rating, no support ones
    assert (default.support_sizes == tasks.support_sizes).all()
    assert (default.query_sizes == tasks.query_sizes * 5).all()


def test_errors() -> None:
    tasks = _random_tasks(20)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="popularity has shape"):
        sample_negatives(tasks, N_ITEMS, 2, rng, popularity=np.ones(3))
    with pytest.raises(ConfigError, match="finite and >= 0"):
        sample_negatives(tasks, N_ITEMS, 2, rng, popularity=-np.ones(N_ITEMS))
    with pytest.raises(ConfigError, match="bool mask"):
        sample_negatives(tasks, N_ITEMS, 2, rng, candidates=np.ones(N_ITEMS))
    with pytest.raises(ConfigError, match="no item can be drawn"):
        sample_negatives(tasks, N_ITEMS, 2, rng, candidates=np.zeros(N_ITEMS, bool))
    with pytest.raises(ConfigError, match="outside 0..9"):
        sample_negatives(tasks, 10, 2, rng)
    with pytest.raises(ConfigError, match="per_task"):
        sample_negatives(tasks, N_ITEMS, -1, rng)
    with pytest.raises(ConfigError, match="per_task has shape"):
        sample_negatives(tasks, N_ITEMS, np.ones(3, int), rng)
    with pytest.raises(ConfigError, match="query_ratio"):
        with_negatives(tasks, N_ITEMS, rng, query_ratio=-1)
