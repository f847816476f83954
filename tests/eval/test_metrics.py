"""Known-answer tests: every metric against values worked out by hand in the comments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from metarec.eval import metrics as M
from metarec.tasks.taskset import TaskSet

L2 = math.log2


# ---------------------------------------------------------------------- rating error
def test_mae_rmse_by_hand():
    y, p = np.array([1, 2, 3, 4.0]), np.array([2, 2, 5, 4.0])
    # |errors| = 1, 0, 2, 0 ; squared = 1, 0, 4, 0
    assert M.mae(y, p) == pytest.approx(0.75)
    assert M.rmse(y, p) == pytest.approx(math.sqrt(1.25))
    with pytest.raises(ValueError):
        M.mae(y, p[:3])


def _two_tasks(q_ratings: list[list[float]]) -> TaskSet:
    sizes = [len(q) for q in q_ratings]
    return TaskSet(
        "t", np.arange(len(sizes)), np.zeros(len(sizes) + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
        np.r_[0, np.cumsum(sizes)].astype(np.int64), np.arange(sum(sizes)), np.concatenate(q_ratings).astype(np.float32),
    )


def test_mae_rmse_over_tasks_is_rating_weighted():
    tasks = _two_tasks([[5, 3, 4, 1], [2, 2]])
    pred = np.array([4.5, 4.0, 2.0, 2.5, 3.0, 2.0])
    # task 0 errors -0.5, 1, -2, 1.5 (|.| sum 5, sq sum 7.5); task 1 errors 1, 0 (sums 1, 1)
    out = M.mae_rmse(tasks, pred)
    assert out["mae"] == pytest.approx(6 / 6)
    assert out["rmse"] == pytest.approx(math.sqrt(8.5 / 6))
    assert out["mae_per_task"] == pytest.approx((5 / 4 + 1 / 2) / 2)
    assert out["rmse_per_task"] == pytest.approx((math.sqrt(7.5 / 4) + math.sqrt(1 / 2)) / 2)


# ---------------------------------------------------------------------- within-query ranking
R = np.array([5, 3, 4, 1.0])  # gains 2^r - 1: 31, 7, 15, 1
S = np.array([0.9, 0.8, 0.1, 0.5])  # ranks items 0, 1, 3, 2 -> gains 31, 7, 1, 15 ; relevant (>=4): 1, 0, 0, 1


def test_ndcg_graded_by_hand():
    assert M.ndcg_at_k(R, S, 1) == pytest.approx(1.0)
    dcg3 = 31 + 7 / L2(3) + 1 / L2(4)
    idcg3 = 31 + 15 / L2(3) + 7 / L2(4)
    assert M.ndcg_at_k(R, S, 3) == pytest.approx(dcg3 / idcg3)
    dcg5 = dcg3 + 15 / L2(5)  # k capped at the 4 query items
    idcg5 = idcg3 + 1 / L2(5)
    assert M.ndcg_at_k(R, S, 5) == pytest.approx(dcg5 / idcg5)
    # negated scores put item 2 (rating 4, gain 15) first
    assert M.ndcg_at_k(R, -S, 1) == pytest.approx(15 / 31)


def test_precision_by_hand():
    assert M.precision_at_k(R, S, 1) == pytest.approx(1.0)
    assert M.precision_at_k(R, S, 3) == pytest.approx(1 / 3)
    assert M.precision_at_k(R, S, 5) == pytest.approx(2 / 4)  # capped at the query size


def test_average_precision_by_hand():
    # relevance in rank order 1, 0, 0, 1 ; R = 2
    assert M.average_precision_at_k(R, S, 1) == pytest.approx(1.0)  # 1 / min(2, 1)
    assert M.average_precision_at_k(R, S, 3) == pytest.approx(1 / 2)  # (1/1) / 2
    assert M.average_precision_at_k(R, S, 4) == pytest.approx((1 + 2 / 4) / 2)
    assert math.isnan(M.average_precision_at_k(np.array([1, 2.0]), np.array([1, 2.0]), 2))
    assert M.map_at_k([R, np.array([1, 2.0])], [S, np.array([0, 1.0])], 3) == pytest.approx(1 / 2)


def test_ties_are_scored_as_random_order_by_hand():
    # Two tied items, ratings 5 and 1: each position expects gain (31 + 1) / 2.
    assert M.ndcg_at_k(np.array([5, 1.0]), np.zeros(2), 1) == pytest.approx(16 / 31)
    assert M.precision_at_k(np.array([5, 1.0]), np.zeros(2), 1) == pytest.approx(0.5)
    # AP@2: order (rel, non) -> 1, (non, rel) -> 1/2 ; mean 3/4
    assert M.average_precision_at_k(np.array([5, 1.0]), np.zeros(2), 2) == pytest.approx(0.75)
    # One non-relevant item on top, then 3 tied items of which 2 relevant. Equally likely patterns:
    # 0110 -> (1/2 + 2/3)/2 = 7/12 ; 0101 -> (1/2 + 2/4)/2 = 1/2 ; 0011 -> (1/3 + 2/4)/2 = 5/12 ; mean 1/2
    r, s = np.array([1, 5, 5, 1.0]), np.array([2, 1, 1, 1.0])
    assert M.average_precision_at_k(r, s, 4) == pytest.approx(0.5)
    # AP@2 (divides by min(2, 2)): 01 -> 1/4, 01 -> 1/4, 00 -> 0 ; mean 1/6
    assert M.average_precision_at_k(r, s, 2) == pytest.approx(1 / 6)


def _brute_force(metric, ratings, scores, *args):
    """Average of ``metric`` over every order of the tied items, each scored without ties."""
    n = len(scores)
    values = []
    for perm in itertools.permutations(range(n)):
        order = sorted(range(n), key=lambda i: (-scores[i], perm.index(i)))
        distinct = np.empty(n)
        distinct[order] = -np.arange(n, dtype=float)
        values.append(metric(ratings, distinct, *args))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(12))
def test_tie_expectation_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    ratings = rng.integers(1, 6, n).astype(float)
    if (ratings >= 4).sum() == 0:
        ratings[0] = 5.0
    scores = rng.integers(0, 3, n).astype(float)
    for k in (1, 2, 3, 5):
        for metric in (M.ndcg_at_k, M.precision_at_k, M.average_precision_at_k):
            assert metric(ratings, scores, k) == pytest.approx(_brute_force(metric, ratings, scores, k), abs=1e-12)
    cands = np.arange(n) + 100
    relevant = cands[ratings >= 4]

    def catalogue(metric, *extra):
        return lambda r, s, *a: metric(s, cands, relevant, *extra, *a)

    assert M.catalogue_mrr(scores, cands, relevant) == pytest.approx(_brute_force(catalogue(M.catalogue_mrr), ratings, scores))
    for k in (1, 3):
        for metric in (M.catalogue_ndcg_at_k, M.catalogue_recall_at_k):
            got = metric(scores, cands, relevant, k)
            assert got == pytest.approx(_brute_force(catalogue(metric), ratings, scores, k), abs=1e-12)


def test_query_ranking_metrics_average_tasks_by_hand():
    tasks = _two_tasks([[5, 3, 4, 1], [2, 2]])
    pred = np.array([4.5, 4.0, 2.0, 2.5, 3.0, 2.0])  # task 0 ranks like S ; task 1 has no relevant item
    out = M.query_ranking_metrics(tasks, pred, ks=(1, 3))
    ndcg3_task0 = (31 + 7 / L2(3) + 1 / 2) / (31 + 15 / L2(3) + 7 / 2)
    assert out["ndcg@1"] == pytest.approx(1.0)  # task 1: equal gains, any order is ideal
    assert out["ndcg@3"] == pytest.approx((ndcg3_task0 + 1.0) / 2)
    assert out["precision@1"] == pytest.approx((1 + 0) / 2)
    assert out["precision@3"] == pytest.approx((1 / 3 + 0) / 2)
    assert out["map@1"] == pytest.approx(1.0)  # task 1 has no AP and is left out
    assert out["map@3"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.query_ranking_metrics(tasks, pred[:5])


# ---------------------------------------------------------------------- full-catalogue ranking
CANDS = np.array([10, 11, 12, 13, 14])
CSCORES = np.array([0.1, 0.9, 0.5, 0.7, 0.3])  # order 11, 13, 12, 14, 10 ; relevant 12, 14 at ranks 3, 4
REL = np.array([12, 14, 99])  # 99 is not a candidate: ignored


def test_catalogue_metrics_by_hand():
    assert M.catalogue_ndcg_at_k(CSCORES, CANDS, REL, 3) == pytest.approx((1 / L2(4)) / (1 + 1 / L2(3)))
    assert M.catalogue_ndcg_at_k(CSCORES, CANDS, REL, 5) == pytest.approx((1 / L2(4) + 1 / L2(5)) / (1 + 1 / L2(3)))
    assert M.catalogue_recall_at_k(CSCORES, CANDS, REL, 3) == pytest.approx(1 / 2)
    assert M.catalogue_recall_at_k(CSCORES, CANDS, REL, 5) == pytest.approx(1.0)
    assert M.catalogue_mrr(CSCORES, CANDS, REL) == pytest.approx(1 / 3)
    assert math.isnan(M.catalogue_mrr(CSCORES, CANDS, np.array([99])))
    np.testing.assert_array_equal(M.top_k_items(CSCORES, CANDS, 2), [11, 13])


def test_catalogue_mrr_ties_by_hand():
    # 4 tied candidates, 1 relevant: rank 1..4 equally likely -> (1 + 1/2 + 1/3 + 1/4) / 4
    assert M.catalogue_mrr(np.zeros(4), np.arange(4), np.array([2])) == pytest.approx(25 / 48)
    # one item on top, then 3 tied of which 2 relevant: first hit at rank 2 w.p. 2/3, rank 3 w.p. 1/3
    assert M.catalogue_mrr(np.array([1, 0, 0, 0.0]), np.arange(4), np.array([1, 2])) == pytest.approx(2 / 3 / 2 + 1 / 3 / 3)


# ---------------------------------------------------------------------- popularity bias
POP = np.array([10, 5, 5, 0, 1])  # items 0..4 ; sorted 0, 1, 5, 5, 10
RECS = [np.array([0, 1]), np.array([0, 3])]


def test_coverage_by_hand():
    assert M.coverage_at_k(RECS, np.arange(5)) == pytest.approx(3 / 5)
    assert M.coverage_at_k(RECS, np.arange(5), k=1) == pytest.approx(1 / 5)
    assert M.coverage_at_k(RECS, np.array([0, 1, 2])) == pytest.approx(2 / 3)


def test_popularity_percentile_by_hand():
    # mid-rank: item 0 -> (4 + 0.5) / 5 ; items 1, 2 -> (2 + 1) / 5 ; item 3 -> 0.5 / 5 ; item 4 -> 1.5 / 5
    np.testing.assert_allclose(M.popularity_percentile(POP), [90, 60, 60, 10, 30])
    # slots 0, 1, 0, 3 -> (90 + 60 + 90 + 10) / 4
    assert M.mean_popularity_percentile(RECS, POP) == pytest.approx(62.5)


def test_long_tail_share_by_hand():
    # head = ceil(0.2 * 5) = 1 item: item 0 ; slots 0, 1, 0, 3 -> 2 of 4 outside
    assert M.long_tail_share(RECS, POP) == pytest.approx(0.5)
    # head_fraction 0.4 -> items 0 and 1 (1 and 2 tie at 5: lower id first) -> only item 3 outside
    np.testing.assert_array_equal(np.sort(M.head_items(POP, head_fraction=0.4)), [0, 1])
    assert M.long_tail_share(RECS, POP, head_fraction=0.4) == pytest.approx(1 / 4)


def test_catalogue_ranking_metrics_helper():
    # One task: support item 0 excluded from candidates; query items 2 (rated 5) and 3 (rated 2).
    tasks = TaskSet("t", np.array([0]), np.array([0, 1]), np.array([0]), np.array([4.0], np.float32),
                    np.array([0, 2]), np.array([2, 3]), np.array([5.0, 2.0], np.float32))
    score = lambda t, cands: -cands.astype(float)  # noqa: E731 - ranks 1, 2, 3, 4 ; relevant item 2 at rank 2
    out = M.catalogue_ranking_metrics(score, tasks, np.arange(5), POP, k=2)
    assert out["mrr"] == pytest.approx(1 / 2)
    assert out["recall@2"] == pytest.approx(1.0)
    assert out["ndcg@2"] == pytest.approx(1 / L2(3))
    assert out["coverage@2"] == pytest.approx(2 / 5)  # items 1, 2
    assert out["popularity_percentile@2"] == pytest.approx(60.0)
    assert out["long_tail@2"] == pytest.approx(1.0)
