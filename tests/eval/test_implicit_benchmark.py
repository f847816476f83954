"""The implicit-feedback benchmark: its top-N metrics against hand-computed values, and the runner's
bookkeeping on a small planted-cluster dataset with two test doubles (an oracle that knows each task's
held-out positives and a random scorer) whose numbers are known in advance."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError
from metarec.eval.implicit import ImplicitBenchmarkConfig, rank_tasks, run_implicit_benchmark, save
from metarec.eval.implicit import metrics as implicit_metrics
from metarec.eval.implicit import run as implicit_run
from metarec.eval.implicit.metrics import catalogue_metrics
from metarec.tasks import SplitConfig, make_split
from metarec.tasks.taskset import TaskSet

# ---------------------------------------------------------------------- metrics on a hand-made score matrix
N = 6
CANDIDATES = np.array([True, True, True, True, True, False])  # item 5 is outside the scenario's catalogue


def _tasks(supports: list[list[int]], queries: list[list[tuple[int, float]]]) -> TaskSet:
    s_ptr = np.r_[0, np.cumsum([len(s) for s in supports])].astype(np.int64)
    q_ptr = np.r_[0, np.cumsum([len(q) for q in queries])].astype(np.int64)
    return TaskSet("t", np.arange(len(supports)), s_ptr, np.array([i for s in supports for i in s], np.int64),
                   np.ones(int(s_ptr[-1]), np.float32), q_ptr, np.array([i for q in queries for i, _ in q], np.int64),
                   np.array([r for q in queries for _, r in q], np.float32))


def _hand_case() -> tuple[np.ndarray, TaskSet]:
    tasks = _tasks(
        supports=[[0], [], [2], [0]],
        queries=[[(1, 1.0), (3, 1.0), (4, 0.0)],  # item 4 is a sampled negative (rating 0): not relevant
                 [(5, 1.0)],                       # its only positive is outside the catalogue: nothing to measure
                 [(3, 1.0)],                       # every score tied: ranked by item index
                 [(4, 1.0)]])                      # the method's own -inf must still outrank masked items
    scores = np.array([
        [9.0, 5.0, 8.0, 1.0, 7.0, 10.0],    # masked: 0 (support), 5 (catalogue) -> ranking 2, 4, 1, 3
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],     # 2 masked -> ranking 0, 1, 3, 4
        [1.0, 1.0, 1.0, 1.0, -np.inf, 100.0],  # -> ranking 1, 2, 3, 4
    ])
    return scores, tasks


def test_metrics_match_hand_computed_values():
    scores, tasks = _hand_case()
    r = rank_tasks(scores, tasks, CANDIDATES, ks=(1, 3))
    v = r.per_task
    # task 0: relevant {1, 3} at ranks 2 and 3 (0-based); only item 1 in the top 3
    assert v["recall@1"][0] == 0 and v["hit@1"][0] == 0 and v["ndcg@1"][0] == 0
    assert v["recall@3"][0] == pytest.approx(0.5)  # hits / |relevant|, not hits / min(k, |relevant|)
    assert v["ndcg@3"][0] == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert v["hit@3"][0] == 1 and v["mrr"][0] == pytest.approx(1 / 3)
    # task 1: nothing relevant among the candidates -> NaN everywhere, left out of the means
    assert all(math.isnan(v[m][1]) for m in v)
    # task 2: four candidates tied (0, 1, 3, 4); relevant item 3 is at each place with probability 1/4
    assert v["recall@1"][2] == pytest.approx(1 / 4) and v["recall@3"][2] == pytest.approx(3 / 4)
    assert v["hit@1"][2] == pytest.approx(1 / 4) and v["hit@3"][2] == pytest.approx(3 / 4)
    assert v["mrr"][2] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert v["ndcg@3"][2] == pytest.approx((1 + 1 / math.log2(3) + 1 / 2) / 4)
    # task 3: items 1-3 then the -inf item 4; masked 0 (support) and 5 (off-catalogue, scored 100) never rank
    assert v["mrr"][3] == pytest.approx(1 / 4) and v["recall@3"][3] == 0
    assert [t.tolist() for t in r.top] == [[2, 4, 1], [4, 3, 2], [0, 1, 3], [1, 2, 3]]
    means = r.means()
    assert means["mrr"] == pytest.approx((1 / 3 + (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4 + 1 / 4) / 3)
    # the same from a torch tensor, and the caller's matrix left as it was
    again = rank_tasks(torch.as_tensor(scores, dtype=torch.float64), tasks, CANDIDATES, ks=(1, 3)).per_task
    assert all(np.allclose(again[m], v[m], equal_nan=True) for m in v)
    assert scores[0, 0] == 9.0


def test_support_items_and_catalogue_are_excluded():
    scores = np.array([[10.0, 9.0, 8.0, 1.0, 0.0, 11.0]])
    # without masking, item 1 would sit at rank 1; support item 0 and off-catalogue item 5 are removed
    r = rank_tasks(scores, _tasks([[0]], [[(1, 1.0)]]), CANDIDATES, ks=(1,))
    assert r.per_task["recall@1"][0] == 1 and r.per_task["mrr"][0] == 1
    everything = rank_tasks(scores, _tasks([[]], [[(1, 1.0)]]), np.ones(N, bool), ks=(1,))
    assert everything.per_task["mrr"][0] == pytest.approx(1 / 3)


def test_ndcg_ideal_uses_min_k_relevant_and_coverage_uses_the_top_lists():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    tasks = _tasks([[]], [[(0, 1.0), (1, 1.0), (2, 1.0)]])
    r = rank_tasks(scores, tasks, np.ones(N, bool), ks=(2,))
    assert r.per_task["ndcg@2"][0] == pytest.approx(1.0) and r.per_task["recall@2"][0] == pytest.approx(2 / 3)
    popularity = np.array([100.0, 1, 50, 1, 1, 1])
    cat = catalogue_metrics(r, np.ones(N, bool), popularity, ks=(2,))
    assert cat["coverage@2"] == pytest.approx(2 / 6)
    assert cat["long_tail@2"] == pytest.approx(0.5)  # head = the 2 most popular: items 0 and 2


def test_ties_score_the_expectation_over_random_orders():
    """Integer scores with many ties against the mean over 4000 tie-free perturbations of them, and
    against the per-task tie-aware functions of metarec.eval.metrics."""
    from metarec.eval.metrics import catalogue_mrr, catalogue_ndcg_at_k, catalogue_recall_at_k

    rng = np.random.default_rng(3)
    n_items, trials = 12, 4000
    supports = [[0], [1, 2], [], [3], [4, 5, 6]]
    queries = [[(1, 1.0), (2, 1.0), (7, 1.0)], [(0, 1.0)], [(8, 1.0), (9, 1.0), (10, 1.0), (11, 1.0)], [(4, 1.0)],
               [(0, 1.0), (1, 1.0)]]
    tasks = _tasks(supports, queries)
    scores = rng.integers(0, 3, (len(supports), n_items)).astype(np.float64)
    candidates = np.ones(n_items, bool)
    candidates[11] = False
    exact = rank_tasks(scores, tasks, candidates, ks=(2, 4)).per_task
    many = _tasks(supports * trials, queries * trials)
    noisy = np.tile(scores, (trials, 1)) + rng.uniform(0, 0.5, (trials * len(supports), n_items))
    sampled = rank_tasks(noisy, many, candidates, ks=(2, 4)).per_task
    for metric, values in exact.items():
        mean = sampled[metric].reshape(trials, len(supports)).mean(0)
        assert np.allclose(values, mean, atol=0.025), (metric, values, mean)
    for t in range(len(supports)):
        cand = np.flatnonzero(candidates & ~np.isin(np.arange(n_items), supports[t]))
        rel = [i for i, _ in queries[t]]
        assert exact["recall@4"][t] == pytest.approx(catalogue_recall_at_k(scores[t, cand], cand, rel, 4))
        assert exact["ndcg@4"][t] == pytest.approx(catalogue_ndcg_at_k(scores[t, cand], cand, rel, 4))
        assert exact["mrr"][t] == pytest.approx(catalogue_mrr(scores[t, cand], cand, rel))


def test_batched_ranking_equals_one_batch(monkeypatch):
    rng = np.random.default_rng(0)
    n_tasks, n_items = 40, 30
    supports = [list(rng.choice(n_items, 3, replace=False)) for _ in range(n_tasks)]
    queries = [[(int(i), 1.0) for i in rng.choice([j for j in range(n_items) if j not in s], 4, replace=False)]
               for s in supports]
    tasks = _tasks(supports, queries)
    scores = rng.integers(0, 5, (n_tasks, n_items)).astype(np.float32)  # many ties
    whole = rank_tasks(scores, tasks, np.ones(n_items, bool)).per_task
    monkeypatch.setattr(implicit_metrics, "MAX_BATCH_CELLS", 7 * n_items)
    batched = rank_tasks(scores, tasks, np.ones(n_items, bool)).per_task
    monkeypatch.setattr(implicit_run, "SCORE_CELLS", 9 * n_items)
    chunked = implicit_run.rank_scores(lambda t: scores[t.user_idx], tasks, np.ones(n_items, bool), (10, 20)).per_task
    for m in whole:
        assert np.allclose(whole[m], batched[m], equal_nan=True) and np.allclose(whole[m], chunked[m], equal_nan=True), m


def test_bad_scores_are_refused():
    scores, tasks = _hand_case()
    with pytest.raises(ValueError, match="shape"):
        rank_tasks(scores[:, :5], tasks, CANDIDATES)
    scores[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rank_tasks(scores, tasks, CANDIDATES)


# ---------------------------------------------------------------------- the runner on planted clusters
SPLIT = SplitConfig(query_size=5, min_support=1, min_ratings=10, min_val_users=30, new_item_fraction=0.4,
                    heavy_users="drop")


def clustered(n_users: int = 300, n_items: int = 60, clusters: int = 3, seed: int = 0) -> RatingDataset:
    """Each user's 14-18 positives all in one of ``clusters`` item blocks; the user attribute is the
    cluster, the item attribute the block."""
    rng = np.random.default_rng(seed)
    per = n_items // clusters
    rows, users = [], []
    for u in range(n_users):
        c = u % clusters
        for j in rng.choice(per, rng.integers(14, 19), replace=False):
            rows.append((f"u{u}", f"i{c * per + j}", 1.0, int(rng.integers(1_000_000, 2_000_000))))
        users.append((f"u{u}", f"c{c}"))
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    table = pd.DataFrame(users, columns=["user_id", "cluster"]).set_index("user_id")
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)],
                          "block": [f"b{j // per}" for j in range(n_items)]}).set_index("item_id")
    return RatingDataset.from_frames("clusters", ratings, table, items, rating_scale=(0.0, 1.0),
                                     meta={"feedback": "implicit"})


class Oracle:
    """Knows each task's held-out positives and scores them above everything: recall@20 must be 1."""

    name = "oracle"

    def __init__(self, config: ImplicitBenchmarkConfig) -> None:
        self.fit_users: set[int] = set()
        self.fit_test_tasks = 0

    def fit(self, split, seed: int) -> None:
        self.n_items = split.dataset.n_items
        for tasks in (split.meta_train, *split.validation.values(), *split.test.values()):
            self.fit_users |= set(tasks.user_idx.tolist())
        self.fit_test_tasks = sum(len(t) for t in split.test.values())
        SEEN.append(self)

    def score(self, tasks: TaskSet) -> np.ndarray:
        out = np.zeros((len(tasks), self.n_items), np.float32)
        pos = tasks.query_rating > 0
        out[tasks.query_task[pos], tasks.query_item[pos]] = 1.0
        return out


class Random:
    """Uniform random scores: recall@k about k / |candidates|."""

    name = "random"

    def __init__(self, config: ImplicitBenchmarkConfig) -> None:
        self.rng = np.random.default_rng(0)

    def fit(self, split, seed: int) -> None:
        self.n_items = split.dataset.n_items
        self.rng = np.random.default_rng(seed)

    def score(self, tasks: TaskSet) -> np.ndarray:
        return self.rng.random((len(tasks), self.n_items)).astype(np.float32)


class KnownItemsOracle(Oracle):
    """The oracle on items seen in training, and the reverse on new items (their positives ranked last):
    the best baseline for new users, the worst for new users on new items."""

    name = "known"

    def fit(self, split, seed: int) -> None:
        self.n_items = split.dataset.n_items
        train = split.meta_train
        self.known = np.zeros(self.n_items, bool)
        self.known[np.r_[train.support_item, train.query_item]] = True

    def score(self, tasks: TaskSet) -> np.ndarray:
        out = super().score(tasks)
        out[:, ~self.known] *= -1.0
        return out


SEEN: list[Oracle] = []
DOUBLES = {"oracle": Oracle, "random": Random, "known": KnownItemsOracle}


@pytest.fixture(scope="module")
def clusters() -> RatingDataset:
    return clustered()


@pytest.fixture(scope="module")
def doubles_result(clusters):
    SEEN.clear()
    cfg = ImplicitBenchmarkConfig(seeds=(0, 1), support_sizes=(1, 3), support_draws=2, methods=("oracle", "random"),
                                  compare=("oracle",), bootstrap=300, split=SPLIT)
    return run_implicit_benchmark(clusters, cfg, factories=DOUBLES)


def test_oracle_and_random_give_the_numbers_known_in_advance(doubles_result):
    rows = doubles_result.rows
    test = rows[~rows["scenario"].str.startswith("_")]
    assert set(test["scenario"]) == {"new_users", "new_users_new_items"}
    assert set(test["k_support"]) == {0, 1, 3} and set(test["seed"]) == {0, 1}

    def value(method, metric, scenario="new_users", k=0):
        sel = test[(test["method"] == method) & (test["metric"] == metric) & (test["scenario"] == scenario) & (test["k_support"] == k)]
        assert len(sel) == 2, (method, metric, scenario, k)
        return sel["value"].to_numpy()

    for scenario in ("new_users", "new_users_new_items"):
        for k in (0, 1, 3):
            assert np.allclose(value("oracle", "recall@20", scenario, k), 1.0)  # 5 query items <= 20
            assert np.allclose(value("oracle", "ndcg@10", scenario, k), 1.0)
            assert np.allclose(value("oracle", "mrr", scenario, k), 1.0)
    # random: new users rank ~60 rated items minus the support; new items ~24 new items minus the support
    assert np.all(np.abs(value("random", "recall@20") - 20 / 56) < 0.1)
    assert np.all(value("random", "recall@20", "new_users_new_items") > 0.6)  # 20 of ~22 candidates
    # selection: the oracle is perfect on validation users too, and the best "baseline" is the random one
    val = rows[(rows["scenario"] == "_validation") & (rows["metric"] == "selection")]
    assert np.allclose(val.loc[val["method"] == "oracle", "value"], 1.0)
    assert doubles_result.comparisons["best_baseline"] == "random"
    summary = doubles_result.summary["0"]["new_users"]["oracle"]["recall@20"]
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(1.0)


def test_paired_bootstrap_separates_oracle_from_random(doubles_result):
    pairs = doubles_result.comparisons["pairs"]["oracle"]
    for scenario in ("new_users", "new_users_new_items"):
        assert set(pairs[scenario]) == {"all", "1", "3"}
        for k, cells in pairs[scenario].items():
            for metric in ("recall@20", "ndcg@20"):
                c = cells[metric]
                assert c["excludes_zero"] and c["difference"] > 0 and c["ci95"][0] > 0, (scenario, k, metric)
                assert c["ci95"][0] <= c["difference"] <= c["ci95"][1] and c["p_better"] == 1.0
    # the unit is the test task: tasks of both seeds pooled, those without relevant items left out
    counted = doubles_result.rows.query("scenario == 'new_users' and k_support == 0 and metric == 'tasks' "
                                        "and method == 'oracle'")["value"].sum()
    assert pairs["new_users"]["all"]["recall@20"]["tasks"] == counted
    per_task = doubles_result.per_task[("new_users", 0, "oracle", "recall@20")]
    assert set(per_task) == {0, 1} and np.allclose(per_task[0], 1.0)


def test_each_scenario_is_compared_with_its_own_best_baseline(clusters, tmp_path):
    """The best baseline is chosen per scenario on that scenario's validation users: a baseline perfect on
    known items and hopeless on new ones is new users' best, random is both new's."""
    cfg = ImplicitBenchmarkConfig(seeds=(0, 1), support_sizes=(1,), support_draws=1, methods=("oracle", "random", "known"),
                                  compare=("oracle",), bootstrap=300, split=SPLIT)
    seen = list(SEEN)  # the doubles' oracle instances of the module's result, left as they were
    try:
        result = run_implicit_benchmark(clusters, cfg, factories=DOUBLES)
    finally:
        SEEN[:] = seen
    comp = result.comparisons
    assert comp["best_baselines"] == {"new_users": "known", "new_users_new_items": "random"}
    assert comp["best_baseline"] == "known"  # the selection scenario's (new users)
    val = comp["scenario_validation"]
    assert val["new_users"]["known"] == pytest.approx(1.0)  # its positives last among ~20 new items: below random
    assert val["new_users_new_items"]["known"] < val["new_users_new_items"]["random"] - 0.2
    assert set(val["new_users"]) == {"random", "known"}  # baselines only
    users, both = comp["pairs"]["oracle"]["new_users"], comp["pairs"]["oracle"]["new_users_new_items"]
    for k in ("all", "1"):
        assert users[k]["recall@20"]["difference"] == pytest.approx(0.0) and not users[k]["recall@20"]["excludes_zero"]
        assert both[k]["ndcg@20"]["difference"] > 0.3 and both[k]["ndcg@20"]["excludes_zero"]
    md = save(result, tmp_path / "out")["md"].read_text()
    assert "oracle minus known, paired by test user" in md and "oracle minus random, paired by test user" in md
    assert "new users **known**, new users on new items **random**" in md
    # without per-scenario scores (a run journaled before them) every scenario falls back to the one choice
    again = implicit_run.compare(result.per_task, {"random": [0.3, 0.3], "known": [0.9, 0.9]}, ["oracle"],
                                 ["random", "known"], cfg.scenarios, cfg.support_sizes, cfg.compare_metrics, 100)
    assert again["best_baselines"] == {"new_users": "known", "new_users_new_items": "known"}


def test_test_users_never_reach_fit(clusters, doubles_result):
    assert len(SEEN) == 2  # one oracle per seed
    for oracle, seed in zip(SEEN, (0, 1)):
        split = make_split(clusters, replace(SPLIT, seed=seed))
        assert oracle.fit_test_tasks == 0
        assert not oracle.fit_users & set(split.test_users.tolist())
        assert oracle.fit_users & set(split.val_users.tolist())  # validation users are there to select on


def test_report_and_save(doubles_result, tmp_path):
    paths = save(doubles_result, tmp_path / "out")
    md = paths["md"].read_text()
    assert "## new users" in md and "### recall@20 against K" in md and "| oracle |" in md
    assert "oracle minus random, paired by test user" in md and "| all |" in md and "yes" in md
    assert "MRR, hit rate" in md
    saved = json.loads(paths["json"].read_text())
    assert saved["comparisons"]["best_baseline"] == "random" and saved["feedback"] == "implicit"
    frame = pd.read_csv(paths["csv"])
    assert list(frame.columns) == ["seed", "scenario", "method", "k_support", "metric", "value"]
    assert not list(tmp_path.joinpath("out").glob(".*.tmp"))


def test_popularity_baseline_through_the_adapter(clusters):
    pytest.importorskip("metarec.baselines.implicit", reason="the implicit baselines (helper 'baselines') are not in yet")
    cfg = ImplicitBenchmarkConfig(seeds=(0,), support_sizes=(1,), methods=("popularity", "random"), compare=(),
                                  bootstrap=50, split=SPLIT)
    result = run_implicit_benchmark(clusters, cfg, factories={"random": Random})
    choice = result.choices["popularity"][0]
    assert choice["chosen"] == {} and len(choice["history"]) == 1 and math.isfinite(choice["validation"])
    rows = result.rows
    pop = rows[(rows["method"] == "popularity") & (rows["scenario"] == "new_users")]
    assert set(pop["k_support"]) == {0, 1} and pop["value"].map(math.isfinite).all()
    assert result.comparisons["best_baseline"] in {"popularity", "random"}


def test_content_baseline_through_the_adapter(clusters):
    # the item attribute is the user's cluster block, so content ranks the user's block first, new items too
    cfg = ImplicitBenchmarkConfig(seeds=(0,), support_sizes=(1,), methods=("content", "random"), compare=(),
                                  bootstrap=50, split=SPLIT)
    result = run_implicit_benchmark(clusters, cfg, factories={"random": Random})
    choice = result.choices["content"][0]
    assert len(choice["history"]) == 4 and math.isfinite(choice["validation"])
    rows = result.rows
    recall = rows[rows["metric"] == "recall@10"].groupby(["method", "scenario"])["value"].mean()
    for scenario in cfg.scenarios:  # random: about 0.17 and 0.5 (new items are few); content: about 1
        assert recall["content", scenario] > 0.9 > recall["random", scenario] + 0.3


def test_explicit_data_and_unknown_methods_are_refused(clusters):
    explicit = RatingDataset.from_frames("x", pd.DataFrame({"user_id": ["a", "a"], "item_id": ["b", "c"], "rating": [4.0, 2.0]}))
    with pytest.raises(ConfigError, match="feedback='implicit'"):
        run_implicit_benchmark(explicit, ImplicitBenchmarkConfig(methods=("popularity",), split=SPLIT))
    with pytest.raises(ConfigError, match="unknown implicit method"):
        run_implicit_benchmark(clusters, ImplicitBenchmarkConfig(methods=("nope",), split=SPLIT))
    with pytest.raises(ConfigError, match="selection metric"):
        ImplicitBenchmarkConfig(selection_metric="auc", split=SPLIT)


# ---------------------------------------------------------------------- the CLI
def test_cli_implicit_benchmark(tmp_path):
    from metarec.cli import app

    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{(u % 3) * 20 + j}", float(rng.integers(1, 6)), 1_000_000 + 100 * u + int(j))
            for u in range(240) for j in rng.choice(20, rng.integers(15, 19), replace=False)]
    path = tmp_path / "ratings.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(path, index=False)
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["benchmark", "--dataset", str(path), "--feedback", "implicit", "--methods",
                                      "popularity", "--seeds", "0", "--support-sizes", "1,3", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "recall@20 against K" in result.output
    frame = pd.read_csv(out / "results.csv")
    assert set(frame["method"]) == {"popularity"} and {0, 1, 3} <= set(frame["k_support"])
    bad = CliRunner().invoke(app, ["benchmark", "--dataset", str(path), "--feedback", "implicit", "--item-fold-in",
                                   "--out", str(out)])
    assert bad.exit_code != 0 and "--item-fold-in" in bad.output
    bad = CliRunner().invoke(app, ["benchmark", "--dataset", str(path), "--positive-threshold", "4", "--out", str(out)])
    assert bad.exit_code != 0 and "implicit" in bad.output


# ---------------------------------------------------------------------- the meta-learner's new-item order
def test_reordering_new_items_keeps_every_known_items_rank():
    from metarec.models.new_item_order import reorder_new_items

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((5, 12)).astype(np.float32)
    similarity = rng.random((5, 12))
    new = np.zeros(12, bool)
    new[[1, 4, 5, 9]] = True
    assert np.array_equal(reorder_new_items(scores, similarity, new, 0.0), scores)
    mixed = reorder_new_items(scores, similarity, new, 1e6)
    assert np.array_equal(mixed[:, ~new], scores[:, ~new])
    assert np.array_equal(np.sort(mixed[:, new], axis=1), np.sort(scores[:, new], axis=1))  # the same places
    for row in range(5):  # at a huge weight, the new items' order is the similarity's
        assert np.array_equal(np.argsort(mixed[row, new]), np.argsort(similarity[row, new]))


def test_meta_learner_orders_new_items_by_content_chosen_on_validation(clusters, monkeypatch):
    from metarec.eval.implicit import meta_method
    from metarec.eval.implicit.method import validation_score

    cfg = ImplicitBenchmarkConfig(seeds=(0,), support_sizes=(1,), methods=("meta",), compare=(), split=SPLIT)
    split = make_split(clusters, SPLIT)
    method = meta_method.ImplicitMetaMethod(cfg, {"implicit": {"epochs": 1}})
    method.fit(split, 0)
    weights = method.chosen["content_weight_validation"]
    assert set(weights) == {str(w) for w in meta_method.CONTENT_WEIGHTS}
    assert method.chosen["content_weight"] == method.content_weight and weights[str(method.content_weight)] == max(weights.values())
    both_new = replace(cfg.selection(0), scenario="new_users_new_items")
    assert validation_score(method.score, split, both_new)[0] == weights[str(method.content_weight)]
    # a meta-learner that orders new items at random: content orders them by the user's block, so it must be chosen
    noise = np.random.default_rng(0)
    monkeypatch.setattr(meta_method, "catalogue_scores",
                        lambda learner, tasks: noise.standard_normal((len(tasks), clusters.n_items)).astype(np.float32))
    method._choose_content_weight(split, cfg.selection(0))
    weights = method.chosen["content_weight_validation"]
    assert method.content_weight > 0 and weights[str(method.content_weight)] > weights["0.0"] + 0.2
    tasks = split.test["new_users"]
    seeded = lambda: np.random.default_rng(1).standard_normal((len(tasks), clusters.n_items)).astype(np.float32)
    monkeypatch.setattr(meta_method, "catalogue_scores", lambda learner, tasks: seeded())
    chosen = method.score(tasks)
    order, method.new_item_order = method.new_item_order, None
    alone = method.score(tasks)
    known = ~order.new_items  # known items keep their scores; new items keep their places, reordered
    assert np.array_equal(order.new_items, ~method.features.known_items.numpy())
    assert np.array_equal(chosen[:, known], alone[:, known]) and not np.array_equal(chosen, alone)
    catalogue = implicit_metrics.scenario_catalogue(split, "new_users")
    new_users_query_items = tasks.query_item[tasks.query_rating > 0]
    assert not order.new_items[new_users_query_items].any()
    assert rank_tasks(chosen, tasks, catalogue).means() == rank_tasks(alone, tasks, catalogue).means()


def test_encoded_attribute_vectors_match_the_content_baselines():
    """The served order's attribute vectors (from the model's encoded features) are the content baseline's
    (from the items table) where every value was seen in training: one-hot blocks, IDF-weighted multi-hot."""
    from metarec.baselines.implicit.content import item_attribute_matrix
    from metarec.data.encoding import FeatureEncoder
    from metarec.data.schema import AttributeSpec
    from metarec.models.new_item_order import NewItemOrder, attribute_matrix, reorder_new_items

    items = pd.DataFrame({"genre": ["a", "b", "a", None], "tags": [["x", "y"], ["y"], [], ["x", "z"]]})
    schema = {"genre": AttributeSpec("categorical"), "tags": AttributeSpec("multi")}
    encoder = FeatureEncoder.fit(items, schema)
    encoded = attribute_matrix(encoder.transform(items), encoder).toarray()
    raw = item_attribute_matrix(items, schema).toarray()
    raw /= np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    assert np.allclose(encoded @ encoded.T, raw @ raw.T)  # the same cosines between every pair of items
    order = NewItemOrder.from_features(encoder.transform(items), encoder, np.array([1, 1, 0, 0], bool), 1.0)
    similarity = order.similarity(np.array([0, 1, 3]), np.array([0, 1, 2]))  # user 0: item 0; user 1: items 1, 2
    assert np.allclose(similarity[0], (encoded @ encoded[0]))
    assert np.allclose(similarity[1], (encoded @ encoded[1] + encoded @ encoded[2]) / 2)
    scores = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)  # serving's path: new items only
    ptr, support = np.array([0, 1, 3]), np.array([0, 1, 2])
    assert np.array_equal(order.apply(scores, ptr, support),
                          reorder_new_items(scores, order.similarity(ptr, support), order.new_items, 1.0))


def test_the_implicit_ensemble_scores_its_members_mean_and_its_first_member_is_meta(clusters):
    from metarec.eval.implicit.ensemble_method import ImplicitEnsembleMethod
    from metarec.meta.ensemble import MEMBER_SEED_STRIDE
    from metarec.eval.implicit.meta_method import ImplicitMetaMethod

    cfg = ImplicitBenchmarkConfig(seeds=(0,), support_sizes=(1,), methods=("meta", "meta-ensemble"), split=SPLIT)
    split = make_split(clusters, SPLIT)
    quick = {"implicit": {"epochs": 1}}
    single = ImplicitMetaMethod(cfg, quick)
    single.fit(split, 4)
    ensemble = ImplicitEnsembleMethod(cfg, 3, quick)
    ensemble.fit(split, 4)
    assert ensemble.chosen["member_seeds"] == [4, 4 + MEMBER_SEED_STRIDE, 4 + 2 * MEMBER_SEED_STRIDE]
    tasks = split.test["new_users_new_items"]
    own = [m.model_scores(tasks) for m in ensemble.members]
    np.testing.assert_array_equal(own[0], single.model_scores(tasks))  # the same seed: the meta method's model
    assert not np.allclose(own[0], own[1])
    np.testing.assert_allclose(ensemble.model_scores(tasks), np.mean(own, axis=0), rtol=0, atol=1e-6)
    # the new items' order is chosen for the mean, on the both-new validation users
    assert set(ensemble.chosen["content_weight_validation"]) and "content_weight" in ensemble.chosen
    assert cfg.baselines() == ()  # an ensemble is compared, never a baseline
