"""TaskSet operations on small tasks whose contents are known."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_with_history_prepends_the_users_known_ratings_and_never_a_held_item():
    # history: user 7 in two tasks (a chunked heavy user), user 8 in one
    history = TaskSet.from_rows(
        "h", np.array([7, 7, 7, 7, 8, 8]), np.array([1, 2, 3, 4, 5, 6]), np.array([1.0, 2, 3, 4, 5, 1]),
        np.array([False, True, False, True, False, False]), task=np.array([0, 0, 1, 1, 2, 2]))
    # tasks: user 7 (holds item 3 in its query, item 9 in its support), user 9 (unknown), user 8 (no support)
    tasks = TaskSet("t", np.array([7, 9, 8]), np.array([0, 1, 2, 2]), np.array([9, 10]), np.array([5.0, 4.0], np.float32),
                    np.array([0, 2, 3, 4]), np.array([3, 11, 12, 13]), np.array([1.0, 2, 3, 4], np.float32))
    out = tasks.with_history(history)
    assert out.support_of(0)[0].tolist() == [1, 2, 4, 9]  # history (not the query's item 3), then its own support
    assert out.support_of(0)[1].tolist() == [1.0, 2.0, 4.0, 5.0]
    assert out.support_of(1)[0].tolist() == [10]  # an unknown user keeps its support
    assert out.support_of(2)[0].tolist() == [5, 6]
    for t in range(len(tasks)):  # queries untouched
        assert [a.tolist() for a in out.query_of(t)] == [a.tolist() for a in tasks.query_of(t)]
        assert not set(out.support_of(t)[0].tolist()) & set(tasks.query_of(t)[0].tolist())
    # only: the tasks that get the history
    some = tasks.with_history(history, only=np.array([False, True, True]))
    assert some.support_of(0)[0].tolist() == [9] and some.support_of(2)[0].tolist() == [5, 6]
    assert tasks.with_history(history, only=np.array([True, False, False])).support_of(0)[0].tolist() == [1, 2, 4, 9]
    assert tasks.with_history(history, only=np.zeros(3, bool)) is tasks
    assert out.support_prior is None  # plain support unless asked
    # as_prior: the history rows of the flagged tasks are flagged, nothing else
    flagged = tasks.with_history(history, as_prior=np.array([True, True, False]))
    assert [a.tolist() for a in (flagged.support_item, flagged.support_rating)] == [out.support_item.tolist(), out.support_rating.tolist()]
    assert flagged.support_prior.tolist() == [True, True, True, False, False, False, False]  # task 0's 3 history rows
    # the flags follow the rows through subset, with_support, packing and batch selection
    assert flagged.subset(np.array([2, 0])).support_prior.tolist() == [False, False, True, True, True, False]
    keep = np.array([False, True, True, True, True, True, True])
    assert flagged.with_support(keep).support_prior.tolist() == [True, True, False, False, False, False]
    packed = flagged.packed()
    assert packed.support_prior.tolist() == [[1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert packed.support_mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert packed.select([2, 1]).support_prior.tolist() == [[0, 0], [0, 0]]
    assert packed.task(0)["support_prior"].tolist() == [1, 1, 1, 0]
    assert tasks.packed().support_prior is None and tasks.packed().task(0).get("support_prior") is None
    # a second history keeps the first's flags
    twice = flagged.with_history(history.subset([2]), as_prior=np.array([False, False, False]))
    assert twice.support_prior.tolist() == flagged.support_prior.tolist()
    with pytest.raises(ValueError, match="as_prior has 2 entries for 3 tasks"):
        tasks.with_history(history, as_prior=np.array([True, False]))
    with pytest.raises(ValueError, match="support_prior has 1 flags for 2 support ratings"):
        TaskSet("t", tasks.user_idx, tasks.support_ptr, tasks.support_item, tasks.support_rating, tasks.query_ptr,
                tasks.query_item, tasks.query_rating, np.array([True]))


def test_short_supports_cut_a_fraction_and_the_cut_ratings_join_the_query():
    ts = _tasks()
    # fraction 1, max 1: every support is cut to its first rating; nothing is lost
    short = ts.with_short_supports(np.random.default_rng(0), fraction=1.0, max_size=1)
    assert short.support_sizes.tolist() == [1, 1, 1]
    assert (short.support_sizes + short.query_sizes).tolist() == (ts.support_sizes + ts.query_sizes).tolist()
    for t in range(len(ts)):
        assert _pairs(short, t, "support") | _pairs(short, t, "query") == _pairs(ts, t, "support") | _pairs(ts, t, "query")
        assert _pairs(ts, t, "query") <= _pairs(short, t, "query")  # the original query stays the query
        assert not _pairs(short, t, "support") & _pairs(short, t, "query")
    assert ts.with_short_supports(np.random.default_rng(0), fraction=0.0, max_size=5) is ts


def test_short_supports_lengths_are_log_uniform_and_seeded():
    user = np.repeat(np.arange(4000), 30)
    query = np.tile(np.arange(30) < 5, 4000)
    ts = TaskSet.from_rows("big", user, np.arange(len(user)) % 500, np.ones(len(user), np.float32), query)
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    a, b = ts.with_short_supports(rng(), 0.5, 20), ts.with_short_supports(rng(), 0.5, 20)
    assert a.support_sizes.tolist() == b.support_sizes.tolist()
    cut = a.support_sizes < 25
    assert abs(cut.mean() - 0.5) < 0.03  # about half the tasks cut
    sizes = a.support_sizes[cut]
    assert sizes.min() == 1 and sizes.max() <= 20
    # log-uniform on 1..20: P(K <= 4) = log(5) / log(21) = 0.53, far from the uniform 0.2
    assert abs((sizes <= 4).mean() - np.log(5) / np.log(21)) < 0.04
