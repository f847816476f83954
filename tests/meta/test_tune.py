"""`metarec tune`: Optuna trials scored by the trainer's validation K-curve score (the recipe's), the best
configuration written as a TOML that `metarec train --config` takes, and a one-line error without optuna."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import MissingExtraError
from metarec.meta.recipe import SEARCH_SPACE, layered_config, recipe_base
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer
from metarec.meta.tune import explicit_tune_settings, search_dimensions, write_tune
from tiny_data import random_ratings


def small(config: RunConfig) -> RunConfig:
    return config.override("model", embedding_size=8, hidden=[16]).override("train", epochs=1, patience=2, threads=1)


def test_without_optuna_tune_names_the_extra(monkeypatch, tmp_path, tiny_split_new_items):
    from metarec.meta.tune import tune

    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'metarec\[tune\]'"):
        tune(tiny_split_new_items[0], small(recipe_base()), n_trials=1)
    result = CliRunner().invoke(app, ["tune", "--dataset", "unused.csv", "--out", str(tmp_path / "t")])
    assert result.exit_code == 1 and "metarec[tune]" in result.output and "Traceback" not in result.output


def test_the_search_leaves_fixed_and_irrelevant_settings_alone(tiny_split_new_items):
    split, _ = tiny_split_new_items
    base = small(recipe_base())
    names = [f"{s}.{k}" for s, k, _, _ in search_dimensions(split, base, fixed=("meta.l2",))]
    assert "meta.l2" not in names and {"meta.outer_lr", "model.factors", "model.item_ids"} <= set(names)
    mlp = [f"{s}.{k}" for s, k, _, v in search_dimensions(split, RunConfig.preset("feature-mlp"))]
    assert "model.factors" not in mlp  # neural-cf's
    assert explicit_tune_settings({"model": {"factors": 8, "item_id_residual": True}, "meta": {}}) == (
        "model.factors", "model.item_ids")
    assert "train.few_shot_parts" in names  # the recipe's fifth setting, searched here too
    assert explicit_tune_settings({"train": {"short_support_fraction": 0.1}}) == ("train.few_shot_parts",)


def test_two_trials_on_validation_users_and_a_best_toml_train_accepts(tiny_split_new_items, tmp_path):
    pytest.importorskip("optuna", reason="optuna not installed (pip install 'metarec[tune]')")
    from metarec.meta.tune import tune

    split, _ = tiny_split_new_items
    seen = []
    result = tune(split, small(recipe_base()), n_trials=2, sampler_seed=0, progress=lambda *a: seen.append(a[1:]))
    assert len(result.trials) == 2 and seen[-1] == (2, 2)
    assert all(t["state"] == "COMPLETE" for t in result.trials)
    for trial in result.trials:
        # the objective is the validation K-curve score: the mean of the K points and the whole support
        curve = trial["val_curve"]
        points = [v for k, v in curve.items() if k.startswith("val_k") or k == "val_all_mae"]
        assert len(points) == 5 and trial["value"] == pytest.approx(float(np.nanmean(points)))  # as the trainer
        assert trial["value"] == pytest.approx(curve["val_mae"])
    best = min(result.trials, key=lambda t: t["value"])
    assert result.best["number"] == best["number"]
    # retraining the best configuration reaches the same selection score: the objective is what the
    # trainer selects on, measured on validation users
    assert Trainer(result.config, split=split).fit().best_val_mae == pytest.approx(best["value"], abs=1e-6)
    for name, value in best["params"].items():
        assert result.best["settings"][name] == (pytest.approx(value) if isinstance(value, float) else value)

    paths = write_tune(result, tmp_path)
    written = json.loads(paths["json"].read_text())
    assert written["best"]["value"] == pytest.approx(best["value"]) and len(written["trials"]) == 2
    assert written["sampler"] == {"name": "TPE", "seed": 0}
    assert RunConfig.from_toml(paths["toml"]) == result.config
    # what `metarec train --config best.toml` builds: the tuned values, with the recipe's searched ones fixed
    cfg, fixed = layered_config(paths["toml"])
    assert cfg.model == result.config.model and cfg.meta == result.config.meta
    assert set(fixed) == {f"{s}.{k}" for s, k, _ in SEARCH_SPACE}


def test_tune_from_the_command_line_writes_tune_json_and_best_toml(tmp_path):
    pytest.importorskip("optuna", reason="optuna not installed (pip install 'metarec[tune]')")
    table = tmp_path / "ratings.csv"
    random_ratings(np.random.default_rng(0), 100, 40, (12, 25)).to_csv(table, index=False)
    out = tmp_path / "tuned"
    run = ["tune", "--dataset", str(table), "--epochs", "1", "--n-trials", "2", "--sampler-seed", "3", "--out", str(out)]
    result = CliRunner().invoke(app, run, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "validation score" in result.output and (out / "best.toml").exists()
    assert json.loads((out / "tune.json").read_text())["sampler"]["seed"] == 3
    again = CliRunner().invoke(app, run)
    assert again.exit_code == 1 and "--overwrite replaces it" in again.output
    trained = CliRunner().invoke(app, ["train", "--config", str(out / "best.toml"), "--out", str(tmp_path / "run")],
                                 catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    assert RunConfig.from_toml(tmp_path / "run" / "config.toml").meta == RunConfig.from_toml(out / "best.toml").meta
