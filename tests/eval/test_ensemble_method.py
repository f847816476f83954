"""The benchmark's ``maml-ensemble``: its first member is the ``maml`` method's own model, the others train
the chosen configuration from other seeds, and its prediction is the members' mean."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.data.loaders.tabular import load_table
from metarec.errors import ConfigError
from metarec.eval.benchmark import BenchmarkConfig, make_method
from metarec.eval.implicit import ImplicitBenchmarkConfig
from metarec.meta.ensemble import MEMBER_SEED_STRIDE
from metarec.tasks import make_split


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """200 users x 50 items: an item effect plus a user bias, 25 ratings each."""
    path = tmp_path_factory.mktemp("ensemble") / "ratings.csv"
    rng = np.random.default_rng(11)
    effect, bias = rng.choice([-1.2, -0.4, 0.4, 1.2], 50), rng.normal(0, 0.4, 200)
    rows = [(u, i, float(np.clip(np.rint(3 + effect[i] + bias[u] + rng.normal(0, 0.4)), 1, 5)))
            for u in range(200) for i in rng.choice(50, 25, replace=False)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def dataset(table):
    return load_table(table)


def test_the_ensemble_is_the_mean_of_members_whose_first_is_the_maml_model(dataset):
    config = BenchmarkConfig.quick(seeds=(3,), methods=("maml", "maml-ensemble"))
    split = make_split(dataset, config.split_config(3))
    single = make_method("maml", config, 3)
    single.config = single.config.override("train", seed=3)  # what the benchmark's unit does
    single.fit(split)
    ensemble = make_method("maml-ensemble", config, 3)
    ensemble.fit(split)
    assert len(ensemble.members) == config.ensemble_members == 3
    assert [m.config.train.seed for m in ensemble.members] == [3 + MEMBER_SEED_STRIDE * m for m in range(3)]
    tasks = split.test["new_users"]
    own = [m.predict("maml", tasks) for m in ensemble.members]
    np.testing.assert_array_equal(own[0], single.predict("maml", tasks))  # same seed, same configuration
    assert not np.allclose(own[0], own[1])  # another initialisation
    np.testing.assert_allclose(ensemble.predict("maml-ensemble", tasks), np.mean(own, axis=0), rtol=0, atol=1e-12)
    catalogue = np.arange(dataset.n_items)
    scorer = ensemble.scorer("maml-ensemble", tasks, catalogue)
    each = [m.catalogue_scores("maml", tasks, catalogue) for m in ensemble.members]
    np.testing.assert_allclose(scorer(0, catalogue[:7]), np.mean(each, axis=0)[0, :7], rtol=0, atol=1e-6)


def test_the_ensemble_runs_in_a_benchmark_and_is_a_candidate_meta_learner(table, tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["benchmark", "--dataset", str(table), "--methods",
                                      "mf,maml,maml-ensemble", "--members", "2", "--seeds", "0", "--support-sizes",
                                      "1,3", "--no-search", "--epochs", "2", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["config"]["ensemble_members"] == 2  # --members
    rows = pd.read_csv(out / "results.csv")
    val = rows[rows["scenario"] == "_validation"].set_index("method")["value"]
    assert {"maml", "maml-ensemble"} <= set(val.index)
    best = summary["comparisons"]["best_meta_learner"]
    assert best == min(("maml", "maml-ensemble"), key=lambda m: val[m]), dict(val)  # unadapted variants aren't candidates
    assert "maml-ensemble" in set(rows.loc[rows["k"] == 1, "method"])
    # the results page's tables are read from this folder: one row per run, the differences as results.json has them
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        from results_page import ensemble_tables
    finally:
        sys.path.pop(0)
    tables = ensemble_tables([("tiny", out)], ks=("1", "3", "all"))
    diff = summary["comparisons"]["curve"]["new_users"]["1"]["mf"]
    row = next(line for line in tables.splitlines() if line.startswith("| tiny |"))
    assert row.split(" | ")[1].strip("*").startswith(f"{diff['mae_difference']:+.3f}"), row
    assert ("**" in row.split(" | ")[1]) == (diff["ci95"][1] < 0), row
    assert tables.count("| tiny |") == 4  # - mf, - bias, nDCG@10, whole support


@pytest.mark.parametrize("members", [1, 17])
def test_an_ensemble_needs_two_to_sixteen_members(members):
    with pytest.raises(ConfigError, match="ensemble_members"):
        BenchmarkConfig(methods=("maml-ensemble",), ensemble_members=members)
    with pytest.raises(ConfigError, match="ensemble_members"):
        ImplicitBenchmarkConfig(ensemble_members=members)


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
def test_the_cli_refuses_one_member_before_training(table, tmp_path, feedback):
    result = CliRunner().invoke(app, ["benchmark", "--dataset", str(table), "--feedback", feedback, "--members", "1",
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "ensemble_members must be in 2..16, got 1" in result.output, result.output
    assert not (tmp_path / "b").exists()


def test_the_ensembles_pooled_item_fold_in_folds_every_member(dataset):
    """--item-fold-in: each member chooses its own item penalty, and inside ``pooled`` every member scores the
    new items folded in from the tasks' supports; the ensemble's prediction is still the members' mean."""
    from dataclasses import replace

    config = BenchmarkConfig.quick(seeds=(3,), methods=("maml-ensemble",), item_fold_in=True)
    split = make_split(dataset, replace(config.split_config(3), query_size=3, new_item_fraction=0.4))
    ensemble = make_method("maml-ensemble", config, 3)
    ensemble.fit(split)
    ensemble.choose_pool_scale(split)
    assert all(m.pool_penalty is not None for m in ensemble.members)
    tasks = split.test["new_items"]
    alone = ensemble.predict("maml-ensemble", tasks)
    with ensemble.pooled("maml-ensemble", tasks):
        pooled = ensemble.predict("maml-ensemble", tasks)
        each = [m.predict("maml", tasks) for m in ensemble.members]
    np.testing.assert_allclose(pooled, np.mean(each, axis=0), rtol=0, atol=1e-12)
    assert not np.allclose(pooled, alone)  # the new items moved
    np.testing.assert_array_equal(ensemble.predict("maml-ensemble", tasks), alone)  # and are put back after
