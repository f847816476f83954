"""TaskSet operations on small tasks whose contents are known."""

from __future__ import annotations

import numpy as np

from metarec.tasks.taskset import TaskSet


def _tasks() -> TaskSet:
    # three users: 6, 4 and 9 ratings; the first 2 / 1 / 3 listed are the query
    user = np.repeat([5, 7, 9], [6, 4, 9])
    item = np.arange(19)
    rating = (np.arange(19) % 5 + 1).astype(np.float32)
    query = np.concatenate([np.arange(6) < 2, np.arange(4) < 1, np.arange(9) < 3])
    return TaskSet.from_rows("t", user, item, rating, query)


def _pairs(ts: TaskSet, t: int, which: str) -> set[tuple[int, float]]:
    items, ratings = ts.support_of(t) if which == "support" else ts.query_of(t)
    return set(zip(items.tolist(), ratings.tolist()))


def test_resampled_query_keeps_each_tasks_ratings_and_sizes():
    ts = _tasks()
    new = ts.with_resampled_query(np.random.default_rng(0))
    assert new.user_idx.tolist() == ts.user_idx.tolist()
    assert new.support_sizes.tolist() == ts.support_sizes.tolist()
    assert new.query_sizes.tolist() == ts.query_sizes.tolist()
    for t in range(len(ts)):
        both = _pairs(ts, t, "support") | _pairs(ts, t, "query")
        assert _pairs(new, t, "support") | _pairs(new, t, "query") == both
        assert not _pairs(new, t, "support") & _pairs(new, t, "query")


def test_resampled_query_is_seeded_and_covers_every_rating():
    ts = _tasks()
    a = ts.with_resampled_query(np.random.default_rng(3))
    b = ts.with_resampled_query(np.random.default_rng(3))
    assert a.query_item.tolist() == b.query_item.tolist()
    seen: set[int] = set()
    for seed in range(60):
        seen |= set(ts.with_resampled_query(np.random.default_rng(seed)).query_item.tolist())
    assert seen == set(range(19))  # over draws every rating serves as a query rating
    draws = {tuple(ts.with_resampled_query(np.random.default_rng(s)).query_item.tolist()) for s in range(10)}
    assert len(draws) > 1
