"""The benchmark end to end in its quick form (what CI runs): structure present, every number finite."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.eval.benchmark import compare_best, confidence_interval

SCENARIOS = {"warm", "new_users", "new_items", "new_users_new_items"}
POOLED = {"new_items_pooled", "new_users_new_items_pooled"}  # --item-fold-in


@pytest.mark.slow
def test_quick_benchmark_writes_complete_finite_results(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["benchmark", "--dataset", "ml-100k", "--quick", "--item-fold-in", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "results.csv")
    assert set(rows["seed"]) == {0, 1}
    full = rows[(rows["k"] == 0) & ~rows["scenario"].str.startswith("_")]
    assert set(full["scenario"]) == SCENARIOS | POOLED
    assert {"mf", "bias", "maml", "maml-no-adapt", "popularity"} <= set(full["method"])
    for metric in ("mae", "rmse", "ndcg@3", "catalogue_ndcg@10", "catalogue_coverage@10", "catalogue_long_tail@10"):
        assert metric in set(full["metric"]), metric
    # every number is finite (NaN would mean a metric had nothing to measure where it must)
    assert rows["value"].map(math.isfinite).all(), rows[~rows["value"].map(math.isfinite)].head()
    assert set(rows.loc[rows["k"] > 0, "k"]) == {1, 5}
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["summary"]["0"]) >= SCENARIOS
    cell = summary["summary"]["0"]["new_users"]["mf"]["mae"]
    # two seeds: no t-interval (t(0.975, 1) = 12.7 would make it meaningless), the range instead
    assert cell["n"] == 2 and math.isfinite(cell["mean"]) and cell["ci95"] is None
    assert cell["low"] <= cell["mean"] <= cell["high"]
    comp = summary["comparisons"]
    assert comp["best_meta_learner"] == "maml" and comp["best_baseline"] in {"global-mean", "item-mean", "bias", "mf"}
    assert {s for s in comp["scenarios"] if "@" not in s} == SCENARIOS | POOLED
    # every K-curve point is compared too, and the best meta-learner against bias and MF at each K, paired
    assert {"new_users@1", "new_users@5", "new_users_new_items@1"} <= set(comp["scenarios"])
    for scenario in ("new_users", "new_users_new_items"):
        assert set(comp["curve"][scenario]) == {"1", "5", "all"}
        for cells in comp["curve"][scenario].values():
            assert set(cells) == {"bias", "mf"}
            assert all(c["ci95"][0] <= c["mae_difference"] <= c["ci95"][1] for c in cells.values())
    assert comp["curve"]["new_users"]["all"]["mf"]["mae_difference"] == pytest.approx(
        comp["scenarios"]["new_users"]["mae_difference"] if comp["best_baseline"] == "mf" else
        comp["curve"]["new_users"]["all"]["mf"]["mae_difference"])
    # every method's validation score is kept, and catalogue ranking is scored at small K
    assert set(rows.loc[rows["scenario"] == "_validation", "method"]) >= {"mf", "bias", "maml"}
    assert "catalogue_ndcg@10" in set(rows.loc[(rows["k"] == 1) & (rows["scenario"] == "new_users"), "metric"])
    # the strict reading of "beats every baseline": the meta-learner's seed interval against each baseline's
    separation = comp["interval_separation"]
    assert set(separation) == SCENARIOS | POOLED and {"mf", "bias", "item-mean"} <= set(separation["new_users"])
    for cells in separation.values():
        for c in cells.values():
            assert c["separated"] is None  # two seeds: no interval to separate
    assert "MAE interval against each baseline's" in (out / "results.md").read_text()
    # what was chosen on validation users is kept: the baselines' grids and the learning curves
    grid = [r for r in summary["histories"]["mf"]["0"] if "candidate" in r]
    assert len(grid) == 9 + 2 and all(math.isfinite(r["val_score"]) for r in grid)  # 3 x 3, then the bias penalty
    assert any("epoch" in r for r in summary["histories"]["maml"]["1"])
    assert (out / "results.md").read_text().count("## ") >= 7
    assert (out / "k_curve.png").exists() and (out / "learning_curves.png").exists()
    text = (out / "results.md").read_text()
    assert text.index("## The K-curve") < text.index("## Every scenario with the whole support")


def test_confidence_interval_known_values():
    mean, half = confidence_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(confidence_interval([1.0])[1])


def test_bootstrap_prefers_the_truly_better_method():
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.0, 300)
    errors = {("new_users", "maml"): {0: base - 0.05}, ("new_users", "mf"): {0: base}}
    out = compare_best(errors, {"maml": [0.7], "mf": [0.75]}, {"maml": "meta", "mf": "baseline"}, draws=500)
    c = out["scenarios"]["new_users"]
    assert c["mae_difference"] == pytest.approx(-0.05) and c["ci95"][1] < 0 and c["p_meta_better"] == 1.0


def test_seed_paired_interval_of_the_difference():
    """Two seeds whose splits differ in difficulty: each method's own seed interval is wide, the paired one not."""
    import numpy as np

    rng = np.random.default_rng(1)
    easy, hard = rng.uniform(0.5, 0.7, 200), rng.uniform(0.9, 1.1, 200)
    errors = {("new_users", "maml"): {0: easy - 0.02, 1: hard - 0.03, 2: easy - 0.025},
              ("new_users", "mf"): {0: easy, 1: hard, 2: easy}}
    c = compare_best(errors, {"maml": [0.7], "mf": [0.75]}, {"maml": "meta", "mf": "baseline"}, draws=200)["scenarios"]["new_users"]
    assert c["seed_differences"] == pytest.approx([-0.02, -0.03, -0.025])
    mean, half = confidence_interval([-0.02, -0.03, -0.025])
    assert c["seed_ci95"] == pytest.approx([mean - half, mean + half]) and c["seed_ci95"][1] < 0
    own_half = confidence_interval([float((easy - 0.02).mean()), float((hard - 0.03).mean()), float((easy - 0.025).mean())])[1]
    assert own_half > 10 * half  # the split's difficulty dominates each method's own interval


def test_every_meta_learner_is_made_from_a_config_with_an_absolute_query_loss():
    """configs/ml1m-imdb.toml trains on the absolute error; Reptile, which has no query loss, still runs."""
    from metarec.eval.benchmark import META, BenchmarkConfig, make_method
    from metarec.meta.run import RunConfig

    run = RunConfig.preset("neural-cf", "maml").override("meta", query_loss="absolute")
    for name in META:
        method = make_method(name, BenchmarkConfig(dataset="ml-100k", run=run))
        expected = "squared" if name == "reptile" else "absolute"
        assert method.config.meta.query_loss == expected, name


@pytest.mark.slow
def test_item_fold_in_adds_pooled_new_item_scenarios(data_dir, mf_at_its_defaults):
    """``item_fold_in``: the new-item scenarios once more, with new items folded in from the test tasks'
    support sets; the penalty scale is chosen on validation users' new-item tasks, and on ML-100K the
    pooled ratings lower MF's and the meta-learner's error on new items. MF is fitted at its defaults,
    which is what its grid chose on this split (seed 0) when this was written: the same model (the same
    strict and pooled MAE), without 10 more fits."""
    import numpy as np

    import metarec.eval.benchmark.run as running
    from metarec.data.loaders.registry import load_dataset
    from metarec.eval.benchmark import (POOL_SCALES, BenchmarkConfig, chosen_pool_scales, results_markdown,
                                        run_benchmark)
    from metarec.meta.run import RunConfig

    run = RunConfig.from_toml("configs/ml100k.toml").override("train", epochs=2, patience=2)
    # one draw of the K = 5 supports (default 3): the pooled scenarios' presence on the curve is the check;
    # the config trained as it is (no recipe search): the pooled fold-in is under test, not the recipe
    cfg = BenchmarkConfig(dataset="ml-100k", seeds=(0,), methods=("item-mean", "mf", "content", "maml"),
                          support_sizes=(5,), support_draws=1, bootstrap=100, item_fold_in=True, run=run, search=False)
    mf_at_its_defaults(running)
    result = run_benchmark(cfg, dataset=load_dataset("ml-100k", data_dir=str(data_dir)))
    rows = result.rows
    assert rows["value"].map(math.isfinite).all()
    full = result.summary["0"]
    assert {"new_items_pooled", "new_users_new_items_pooled"} <= set(full)
    assert "new_items_pooled" in result.summary["5"]
    for method in ("mf", "maml"):
        for scenario in ("new_items", "new_users_new_items"):
            strict, pooled = full[scenario][method]["mae"]["mean"], full[f"{scenario}_pooled"][method]["mae"]["mean"]
            assert pooled < strict - 0.02, (method, scenario, strict, pooled)
    # content has no item parameters, the unadapted variant uses no support: both unchanged
    for method in ("content", "maml-no-adapt"):
        assert full["new_items_pooled"][method]["mae"]["mean"] == full["new_items"][method]["mae"]["mean"]
    for method in ("mf", "maml", "item-mean"):
        tried = [r["pool_candidate"] for r in result.histories[method][0] if "pool_candidate" in r]
        assert tried == list(POOL_SCALES), method
    assert "new_items_pooled" in result.comparisons["scenarios"]
    chosen = chosen_pool_scales(result.histories)
    for method in ("mf", "maml", "item-mean"):
        rows = [r for r in result.histories[method][0] if "pool_candidate" in r]
        assert chosen[method][0] == min(rows, key=lambda r: r["val_new_items_mae"])["pool_candidate"]
    assert "content" not in chosen
    assert "## Pooled item fold-in" in results_markdown(result)
    assert np.isfinite(result.comparisons["scenarios"]["new_items_pooled"]["mae_difference"])


def test_benchmark_config_checks_history_max_new_support(tmp_path):
    from metarec.errors import ConfigError
    from metarec.eval.benchmark import BenchmarkConfig

    with pytest.raises(ConfigError, match="history_max_new_support"):
        BenchmarkConfig(history_max_new_support=-1)
    assert BenchmarkConfig(history_max_new_support=10).history_max_new_support == 10
    from typer.testing import CliRunner

    from metarec.cli import app

    # the validation-chosen default: every task gets the history, as the prior where it has new-item support
    assert BenchmarkConfig().history_max_new_support is None and BenchmarkConfig().history_as_prior
    assert BenchmarkConfig(history_max_new_support=None).history_max_new_support is None  # every task
    bad = CliRunner().invoke(app, ["benchmark", "--dataset", "ml-100k", "--history-max-new-support", "-1", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "history_max_new_support must be >= 0" in bad.output
    from metarec.cli.options import history_limit

    assert (history_limit(None), history_limit("all"), history_limit(" 5 "), history_limit("0")) == (None, None, 5, 0)
    bad = CliRunner().invoke(app, ["benchmark", "--dataset", "ml-100k", "--history-max-new-support", "some", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "expected an integer or 'all'" in bad.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_split_seed_holds_the_split_and_varies_only_the_training(data_dir, tmp_path, monkeypatch,
                                                                     mf_at_its_defaults):
    """``split_seed``: every seed is scored on one split. A deterministic method (bias) then gives the same
    numbers on every seed and MF, whose initial factors follow the seed, does not; without it the split
    itself changes and so does bias."""
    import numpy as np

    import metarec.eval.benchmark.run as running
    from metarec.eval.benchmark import BenchmarkConfig, make_method, results_markdown, run_benchmark

    def mae(result, method):
        rows = result.rows[(result.rows["k"] == 0) & (result.rows["metric"] == "mae") & (result.rows["method"] == method)]
        return {seed: rows.loc[rows["seed"] == seed, "value"].to_numpy() for seed in (0, 1)}

    base = dict(dataset="ml-100k", data_dir=str(data_dir), seeds=(0, 1), methods=("bias", "mf"), support_sizes=(),
                bootstrap=50)
    mf_at_its_defaults(running)  # the seed's effect on MF's start needs no grid search
    fixed = run_benchmark(BenchmarkConfig(split_seed=1, **base))
    drawn = run_benchmark(BenchmarkConfig(**{**base, "methods": ("bias",)}))  # bias alone tells the splits apart
    bias, mf = mae(fixed, "bias"), mae(fixed, "mf")
    assert len(bias[0]) == 4 and np.array_equal(bias[0], bias[1])
    assert not np.array_equal(mf[0], mf[1]) and np.allclose(mf[0], mf[1], atol=0.01)  # the same split, another start
    assert not np.allclose(mae(drawn, "bias")[0], mae(drawn, "bias")[1], atol=1e-3)
    assert np.array_equal(mae(drawn, "bias")[1], bias[1])  # the fixed split is seed 1's own
    assert "one split (seed 1) for every seed" in results_markdown(fixed)
    assert "every seed: a split and an initialisation" in results_markdown(drawn)
    # MF's initial factors follow the benchmark's seed
    assert make_method("mf", BenchmarkConfig(), 7).candidates[0]().config.seed == 7
    # the CLI passes --split-seed through
    from metarec.eval import benchmark as module

    seen = {}

    def capture(config, **kwargs):
        seen["config"] = config
        raise RuntimeError("captured")

    monkeypatch.setattr(module, "run_benchmark", capture)
    with pytest.raises(RuntimeError, match="captured"):
        CliRunner().invoke(app, ["benchmark", "--dataset", "ml-100k", "--split-seed", "2", "--out", str(tmp_path / "b")],
                           catch_exceptions=False)
    assert seen["config"].split_seed == 2 and seen["config"].split_config(0).seed == 2


def test_interval_separation_known_values():
    """The best meta-learner's interval against each baseline's: hand-made summaries with a known answer."""
    from metarec.eval.benchmark import interval_separation

    def cell(mean, ci):
        return {"mae": {"mean": mean, "ci95": ci, "n": 3}}

    summary = {"new_items": {"maml": cell(0.80, 0.01), "mf": cell(0.83, 0.015), "bias": cell(0.815, 0.01),
                             "global-neural": cell(0.95, 0.2), "global-neural-ft": cell(0.90, 0.01),
                             "popularity": {"ndcg@5": {"mean": 0.5, "ci95": 0.1, "n": 3}}},
               "warm": {"maml": cell(0.70, float("nan")), "mf": cell(0.72, float("nan"))},
               "_fit": {"maml": {"seconds": {"mean": 1.0, "ci95": 0.1, "n": 3}}}}
    families = {"maml": "meta", "maml-no-adapt": "meta", "mf": "baseline", "bias": "baseline", "popularity": "baseline",
                "global-neural": "meta", "global-neural-ft": "meta"}
    out = interval_separation(summary, "maml", families)
    assert set(out) == {"new_items", "warm"}  # no MAE for _fit; popularity has no MAE either
    new = out["new_items"]
    assert set(new) == {"mf", "bias", "global-neural", "global-neural-ft"}
    assert new["mf"] == {"meta_upper": pytest.approx(0.81), "baseline_lower": pytest.approx(0.815), "separated": True}
    assert new["bias"]["separated"] is False  # 0.805 < 0.81: the intervals touch
    assert new["global-neural"]["separated"] is False and new["global-neural-ft"]["separated"] is True
    assert out["warm"]["mf"]["separated"] is None  # one seed: no interval
    assert interval_separation(summary, None, families) == {}


def test_k_curve_comparison_pairs_by_task_at_every_support_size():
    """Known per-task errors: at K=1 the meta-learner is 0.1 better than bias on every task, 0.05 worse than
    MF at K=5; the interval is exact (a constant difference has a zero-width bootstrap)."""
    import numpy as np

    from metarec.eval.benchmark import compare_curve

    base = {0: np.linspace(0.5, 1.0, 50), 1: np.linspace(0.6, 1.1, 50)}
    errors = {("new_users@1", "maml"): {s: e - 0.1 for s, e in base.items()},
              ("new_users@1", "bias"): base,
              ("new_users@5", "maml"): {s: e + 0.05 for s, e in base.items()},
              ("new_users@5", "mf"): base,
              ("new_users", "maml"): base, ("new_users", "mf"): base}
    out = compare_curve(errors, "maml", ("bias", "mf"), ("new_users", "new_users_new_items"), (1, 5), draws=100)
    assert set(out) == {"new_users"} and set(out["new_users"]) == {"1", "5", "all"}
    at1 = out["new_users"]["1"]
    assert set(at1) == {"bias"}  # MF has no K=1 errors: no cell, not a made-up one
    assert at1["bias"]["mae_difference"] == pytest.approx(-0.1)
    assert at1["bias"]["ci95"] == pytest.approx([-0.1, -0.1]) and at1["bias"]["p_meta_better"] == 1.0
    assert at1["bias"]["tasks"] == 100 and at1["bias"]["seed_differences"] == pytest.approx([-0.1, -0.1])
    assert out["new_users"]["5"]["mf"]["mae_difference"] == pytest.approx(0.05)
    assert out["new_users"]["5"]["mf"]["p_meta_better"] == 0.0
    assert out["new_users"]["all"]["mf"]["mae_difference"] == 0.0
    assert compare_curve(errors, None, ("bias",), ("new_users",), (1,), draws=10) == {}
