"""Implicit-feedback baselines against answers computed by hand or independently with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.baselines.implicit import (
    EASE,
    IALS,
    ContentKNN,
    IMPLICIT_BASELINES,
    ImplicitBaseline,
    ItemKNN,
    MostPopular,
    default_grid,
    item_attribute_matrix,
)
from metarec.errors import ConfigError, DataError

FAST = {"ials": {"factors": 4, "iterations": 4},
        "content": {"attributes": (np.random.default_rng(3).random((12, 5)) < 0.4).astype(float)}}


def csr(rows: list[list[int]], conf: list[list[float]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Support sets as (ptr, item, confidence)."""
    ptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    item = np.array([i for r in rows for i in r], np.int64)
    c = np.ones(len(item)) if conf is None else np.array([x for r in conf for x in r], float)
    return ptr, item, c


def triples(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    user = np.array([u for u, r in enumerate(rows) for _ in r], np.int64)
    item = np.array([i for r in rows for i in r], np.int64)
    return user, item, np.ones(len(item))


def random_data(seed: int, n_users: int = 30, n_items: int = 12, density: float = 0.3):
    rng = np.random.default_rng(seed)
    x = rng.random((n_users, n_items)) < density
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = True  # every user has a positive
    user, item = np.nonzero(x)
    return user.astype(np.int64), item.astype(np.int64), rng.integers(1, 5, len(user)).astype(float), x


# -- most popular -----------------------------------------------------------------------------------------

def test_most_popular_ranks_by_users_not_interactions():
    # item 1: one user, three times with high confidence; items 0 and 2 tie on 3 users; item 3 unseen.
    user = np.array([0, 1, 2, 0, 0, 0, 1, 2, 3, 1, 3], np.int64)
    item = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 4, 4], np.int64)
    conf = np.array([1, 1, 1, 50, 50, 50, 1, 1, 1, 1, 1], float)
    model = MostPopular().fit(user, item, conf, 5)
    np.testing.assert_array_equal(model.item_count, [3, 1, 3, 0, 2])
    scores = model.score(*csr([[1], [], [3, 4]]))
    assert scores.shape == (3, 5) and scores.dtype == np.float32
    for row in scores:
        np.testing.assert_array_equal(row, [3, 1, 3, 0, 2])  # the count: items 0 and 2 tie, as they should


# -- item-kNN ---------------------------------------------------------------------------------------------

KNN_ROWS = [[0, 1], [0, 1, 2], [1, 2], [2, 3]]  # item vectors over users: i0 1100, i1 1110, i2 0111, i3 0001


def knn_sims(shrink: float) -> dict[tuple[int, int], float]:
    s6, s3 = np.sqrt(6), np.sqrt(3)
    return {(0, 1): 2 / (s6 + shrink), (0, 2): 1 / (s6 + shrink), (1, 2): 2 / (3 + shrink), (2, 3): 1 / (s3 + shrink)}


@pytest.mark.parametrize("shrink", [0.0, 10.0])
def test_item_knn_hand_computed_cosines(shrink):
    model = ItemKNN(neighbours=None, shrink=shrink).fit(*triples(KNN_ROWS), 4)
    expected = np.zeros((4, 4))
    for (a, b), v in knn_sims(shrink).items():
        expected[a, b] = expected[b, a] = v
    assert model.similarity is not None
    np.testing.assert_allclose(model.similarity.toarray(), expected, rtol=1e-6)
    scores = model.score(*csr([[0], [0, 3]]))
    np.testing.assert_allclose(scores, [expected[0], expected[0] + expected[3]], rtol=1e-6)


def test_item_knn_keeps_each_items_top_neighbours():
    model = ItemKNN(neighbours=1).fit(*triples(KNN_ROWS), 4)
    s = knn_sims(0.0)
    scores = model.score(*csr([[0], [2], [3], [0, 2]]))
    want = np.zeros((4, 4), np.float32)
    want[0, 1] = s[0, 1]  # item 0: 1 beats 2
    want[1, 1] = s[1, 2]  # item 2: 1 (2/3) beats 3 (0.577) and 0 (0.408)
    want[2, 2] = s[2, 3]  # item 3: only 2
    want[3, 1] = s[0, 1] + s[1, 2]
    np.testing.assert_allclose(scores, want, rtol=1e-6)


# -- EASE -------------------------------------------------------------------------------------------------

def ease_closed_form(x: np.ndarray, l2: float) -> np.ndarray:
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def test_ease_equals_the_closed_form():
    user, item, conf, x = random_data(1, n_users=6, n_items=5, density=0.5)
    model = EASE(l2=2.0).fit(user, item, conf, 5)
    want = ease_closed_form(x.astype(float), 2.0)
    assert model.weights is not None and model.weights.dtype == np.float32
    assert np.abs(want).max() > 0.05  # not trivially near 0
    np.testing.assert_allclose(model.weights, want, atol=1e-5)
    np.testing.assert_array_equal(np.diag(model.weights), 0.0)
    scores = model.score(*csr([[0, 3], [4]]))
    np.testing.assert_allclose(scores, [want[0] + want[3], want[4]], atol=1e-5)


def test_ease_ranks_an_always_co_occurring_item_first():
    rng = np.random.default_rng(3)
    x = rng.random((40, 8)) < 0.35
    x[:, 1] = x[:, 0] = rng.random(40) < 0.5
    user, item = np.nonzero(x)
    model = EASE(l2=5.0).fit(user, item, np.ones(len(user)), 8)
    row = model.score(*csr([[0]]))[0]
    assert np.argmax(np.where(np.arange(8) == 0, -np.inf, row)) == 1


def test_ease_refuses_a_catalogue_above_max_items():
    with pytest.raises(ConfigError, match="max_items"):
        EASE(max_items=4).fit(*triples(KNN_ROWS), 5)


# -- iALS -------------------------------------------------------------------------------------------------

def test_ials_fold_in_of_a_training_row_is_its_trained_factors():
    user, item, conf, _ = random_data(2)
    model = IALS(factors=5, iterations=6, reg=0.5, alpha=3.0).fit(user, item, conf, 12)
    order = np.argsort(user, kind="stable")
    ptr = np.r_[0, np.cumsum(np.bincount(user, minlength=30))]
    folded = model.fold_in(ptr, item[order], conf[order])
    assert model.user_factors is not None and np.abs(model.user_factors).max() > 0.05
    np.testing.assert_allclose(folded, model.user_factors, atol=1e-4)


def test_ials_fold_in_is_the_dense_weighted_ridge_solve():
    user, item, conf, _ = random_data(4)
    cfg = {"factors": 6, "iterations": 3, "reg": 0.3, "alpha": 7.0}
    model = IALS(**cfg).fit(user, item, conf, 12)
    support, weight = [2, 5, 9], [1.0, 4.0, 2.5]
    y = model.item_factors.astype(np.float64)
    c, p = np.ones(12), np.zeros(12)
    c[support] = 1 + cfg["alpha"] * np.array(weight)
    p[support] = 1.0
    want = np.linalg.solve(y.T @ (c[:, None] * y) + cfg["reg"] * np.eye(6), y.T @ (c * p))
    got = model.fold_in(*csr([support], [weight]))[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(model.score(*csr([support], [weight]))[0], y @ want, atol=1e-4)


@pytest.mark.parametrize("factors, reg", [(2, 5.0), (8, 20.0)])
def test_ials_ranks_the_planted_cluster_first(factors, reg):
    """Users like 2-4 random items of one of two disjoint groups (0-5, 6-11). With the planted rank, or a
    larger rank held back by reg, one item of a group puts its whole group first. (Small reg and rank > 2
    fits the within-group noise on data this small, sharing factors across groups: not a bug.)"""
    rng = np.random.default_rng(5)
    rows = [list(rng.choice(6, rng.integers(2, 5), replace=False) + 6 * (u % 2)) for u in range(40)]
    model = IALS(factors=factors, iterations=8, reg=reg, alpha=10.0).fit(*triples(rows), 12)
    scores = model.score(*csr([[s] for s in range(12)]))
    for s, row in enumerate(scores):
        mine, other = (row[:6], row[6:]) if s < 6 else (row[6:], row[:6])
        assert mine.min() > other.max() + 0.05, s


def test_ials_is_deterministic_given_the_seed():
    data = random_data(6)[:3]
    a, b = IALS(factors=3, iterations=2).fit(*data, 12), IALS(factors=3, iterations=2).fit(*data, 12)
    c = IALS(factors=3, iterations=2, seed=1).fit(*data, 12)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    assert not np.allclose(a.item_factors, c.item_factors)


# -- content (attribute cosine) ---------------------------------------------------------------------------

# items 0..3 by 3 attributes: 0 = [1,0,0], 1 = [1,1,0], 2 = [0,1,0], 3 = [0,0,1]; cos(0,1) = cos(1,2) = 1/sqrt2
ATTR = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], float)
R = 1 / np.sqrt(2)


def test_content_knn_known_answer_and_new_items():
    # training: item 0 by 3 users, item 1 by 1; items 2 and 3 never seen (new items, count 0).
    user, item, conf = triples([[0, 1], [0], [0]])
    model = ContentKNN(attributes=ATTR).fit(user, item, conf, 4)
    scores = model.score(*csr([[0, 1], [2], [1]]))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores[0], [(1 + R) / 2, (R + 1) / 2, R / 2, 0], rtol=1e-6)  # mean of cosines
    np.testing.assert_allclose(scores[1], [0, R, 1, 0], rtol=1e-6)
    assert scores[2, 2] > scores[2, 3]  # new item 2 shares item 1's attribute, new item 3 shares none
    # sparse attributes and with_items give the same scores
    import scipy.sparse as sp
    other = ContentKNN().with_items(sp.csr_matrix(ATTR)).fit(user, item, conf, 4)
    np.testing.assert_allclose(other.score(*csr([[0, 1], [2], [1]])), scores)


def test_content_knn_popularity_prior_and_empty_support():
    user, item, conf = triples([[0, 1], [0], [0]])
    plain = ContentKNN(attributes=ATTR).fit(user, item, conf, 4)
    mixed = ContentKNN(attributes=ATTR, beta=0.3).fit(user, item, conf, 4)
    prior = np.array([1.0, np.log(2) / np.log(4), 0.0, 0.0])  # log1p(count) / max log1p(count)
    np.testing.assert_allclose(mixed.prior, prior, rtol=1e-6)
    support = csr([[2], [0, 3], []])
    diff = mixed.score(*support) - plain.score(*support)
    np.testing.assert_allclose(diff[:2], np.tile(0.3 * prior, (2, 1)), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(mixed.score(*support)[2], [3, 1, 0, 0])  # no support: the popularity row


def test_content_knn_refuses_missing_or_misshapen_attributes():
    user, item, conf = triples([[0, 1], [2]])
    with pytest.raises(ConfigError, match="attribute"):
        ContentKNN().fit(user, item, conf, 4)
    with pytest.raises(DataError, match="3 rows for 4 items") as err:
        ContentKNN(attributes=ATTR[:3]).fit(user, item, conf, 4)
    assert err.value.field == "attributes"
    for bad in (np.ones(4), np.array([[1.0, np.nan]] * 4), np.zeros((4, 0)), np.array([["a"]] * 4)):
        with pytest.raises(DataError):
            ContentKNN(attributes=bad)
    with pytest.raises(ConfigError):
        ContentKNN(beta=-1.0)


def test_item_attribute_matrix_blocks():
    import pandas as pd

    from metarec.data.schema import AttributeSpec

    items = pd.DataFrame({"genres": [["a", "b"], ["a"], []], "kind": ["x", None, "y"],
                          "year": [1990.0, 2000.0, np.nan], "title": ["t1", "t2", "t3"]}, index=["i0", "i1", "i2"])
    schema = {"genres": AttributeSpec("multi"), "kind": AttributeSpec("categorical"),
              "year": AttributeSpec("numeric", bins=(1995.0,)), "title": AttributeSpec("text")}
    m = item_attribute_matrix(items, schema).toarray()
    assert m.shape == (3, 2 + 2 + 2)  # genres a, b; kind x, y; year below / above 1995; title left out
    np.testing.assert_allclose((m ** 2).sum(axis=1), [3, 2, 1])  # one unit per attribute present
    np.testing.assert_allclose(m[1], [1, 0, 0, 0, 0, 1])
    assert m[0, 1] > m[0, 0] > 0  # IDF: the rarer genre b weighs more than a
    np.testing.assert_allclose(m[0, :2] @ m[0, :2], 1.0)


# -- every baseline ---------------------------------------------------------------------------------------

def fitted(name: str) -> ImplicitBaseline:
    user, item, conf, _ = random_data(7)
    return IMPLICIT_BASELINES[name](**FAST.get(name, {})).fit(user, item, conf, 12)


@pytest.mark.parametrize("name", list(IMPLICIT_BASELINES))
def test_empty_support_gets_the_popularity_row(name):
    model = fitted(name)
    assert isinstance(model, ImplicitBaseline) and model.name == name
    scores = model.score(*csr([[], [1, 2], []]))
    assert scores.shape == (3, 12) and scores.dtype == np.float32 and np.isfinite(scores).all()
    popular = fitted("popularity").score(*csr([[]]))[0]
    np.testing.assert_array_equal(scores[0], popular)
    np.testing.assert_array_equal(scores[2], popular)


@pytest.mark.parametrize("name", list(IMPLICIT_BASELINES))
@pytest.mark.parametrize("field, value", [("item", 12), ("item", -1), ("confidence", -1.0), ("confidence", np.nan),
                                          ("user", -2)])
def test_bad_training_input_names_the_field(name, field, value):
    user, item, conf, _ = random_data(8)
    args = {"user": user.copy(), "item": item.copy(), "confidence": conf.copy()}
    args[field][3] = value
    with pytest.raises(DataError, match=f"field '{field}'") as err:
        IMPLICIT_BASELINES[name](**FAST.get(name, {})).fit(args["user"], args["item"], args["confidence"], 12)
    assert err.value.field == field


@pytest.mark.parametrize("name", list(IMPLICIT_BASELINES))
def test_bad_support_names_the_field(name):
    model = fitted(name)
    with pytest.raises(DataError) as err:
        model.score(*csr([[1, 12]]))
    assert err.value.field == "support_item"
    with pytest.raises(DataError) as err:
        model.score(*csr([[1, 2]], [[1.0, np.inf]]))
    assert err.value.field == "support_confidence"
    with pytest.raises(DataError) as err:
        model.score(np.array([0, 3]), np.array([1, 2]), np.ones(2))
    assert err.value.field == "support_ptr"
    with pytest.raises(RuntimeError, match="not fitted"):
        IMPLICIT_BASELINES[name]().score(*csr([[1]]))


@pytest.mark.parametrize("name", list(IMPLICIT_BASELINES))
def test_grids_are_small_and_build_their_baselines(name):
    grid = default_grid(name)
    assert 1 <= len(grid) <= 8
    for params in grid:
        model = IMPLICIT_BASELINES[name](**params)
        assert all(getattr(model.config, k) == v for k, v in params.items())


def test_unknown_names_and_settings_are_config_errors():
    with pytest.raises(ConfigError, match="known"):
        default_grid("bpr")
    with pytest.raises(ConfigError, match="neighbors"):
        ItemKNN(neighbors=5)
    with pytest.raises(ConfigError):
        EASE(l2=0.0)
