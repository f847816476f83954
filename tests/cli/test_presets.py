"""Named presets shipped inside the package: listed, chosen by name on the CLI and in ``fit``, the same
values as the checkout's configs/, and the same model from a wheel installed outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import ConfigError
from metarec.meta.recipe import explicit_settings, layered_config, load_toml_values, preset_dict, preset_names
from tiny_data import random_ratings

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_checkout_config_is_a_packaged_preset_with_the_same_values(path):
    assert path.stem in preset_names()
    assert preset_dict(path.stem) == load_toml_values(path)
    assert layered_config(path) == layered_config(None, path.stem)


@pytest.mark.parametrize("name", ["maml-gd", "ml100k-feature-mlp", "ml100k", "ml1m-imdb", "recipe"])
def test_every_preset_builds_over_the_recipe(name):
    """maml-gd and the feature-MLP config failed here before (the recipe's neural-cf fold_in leaked into a
    feature-mlp model); a preset of another model kind now starts that section from its defaults."""
    cfg, fixed = layered_config(None, name)
    assert cfg.model.kind == preset_dict(name)["model"]["kind"]
    # what a preset sets is not searched; naming the recipe's own base fixes nothing
    assert fixed == (() if name == "recipe" else explicit_settings(preset_dict(name)))


def test_presets_command_and_preset_help_list_the_names():
    listed = run("presets", "--json")
    assert listed.exit_code == 0, listed.output
    assert sorted(json.loads(listed.stdout)) == preset_names() and "ml100k" in preset_names()
    for command in ("train", "benchmark"):
        result = run(command, "--preset", "help")  # before the missing --out is noticed
        assert result.exit_code == 0, result.output
        assert all(name in result.stdout for name in preset_names())


@pytest.mark.parametrize("command", ["train", "benchmark"])
def test_an_unknown_preset_is_one_line_naming_the_known_ones(command, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("x")
    extra = ["--overwrite"] if command == "train" else []
    result = run(command, "--preset", "ml100", "--out", tmp_path / "old", *extra)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown preset 'ml100'" in lines[0] and "ml100k, ml100k-feature-mlp" in lines[0]
    assert (tmp_path / "old" / "keep.txt").exists()  # --overwrite removed nothing


def test_fit_refuses_an_unknown_preset_and_a_preset_beside_a_config():
    from metarec.meta.recipe import recipe_base
    from metarec.serve import ColdStartRecommender

    frame = random_ratings(np.random.default_rng(0), 20, 10, (3, 8))
    with pytest.raises(ConfigError, match="unknown preset 'nope'; known: maml-gd"):
        ColdStartRecommender().fit(frame, preset="nope")
    with pytest.raises(ConfigError, match="not both"):
        ColdStartRecommender().fit(frame, preset="ml100k", config=recipe_base())


WHEEL_FIT = """
import sys
from pathlib import Path
import pandas as pd
import metarec
site, csv, out = (Path(a) for a in sys.argv[1:4])
assert Path(metarec.__file__).resolve().is_relative_to(site.resolve()), metarec.__file__
import metarec.presets  # the presets are the wheel's files, not the checkout's
assert Path(metarec.presets.__file__).resolve().is_relative_to(site.resolve()), metarec.presets.__file__
from metarec.meta.recipe import preset_names
from metarec.serve import ColdStartRecommender
assert "ml100k" in preset_names(), preset_names()
rec = ColdStartRecommender(replicas=1).fit(pd.read_csv(csv), preset="ml100k", run_dir=out / "run")
rec.save(out / "saved")
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_wheel_outside_the_checkout_fits_the_same_model_as_the_checkout_config(tmp_path):
    """Build the wheel offline, pip-install it into a folder outside the checkout, and from a folder outside the checkout ``fit(frame,
    preset="ml100k")`` (the recipe's search included); the weights are bitwise those of
    ``metarec train --config configs/ml100k.toml`` on the same table in the checkout."""
    project = tmp_path / "project"  # a clean copy: no build/ or egg-info left in the shared checkout
    project.mkdir()
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(project)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("metarec-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert {f"metarec/presets/{n}.toml" for n in ("ml100k", "ml1m-imdb", "recipe")} <= set(archive.namelist())
    site = tmp_path / "site"  # pip installs the wheel there (its dependencies are the test's own environment's)
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                                "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]

    csv = tmp_path / "ratings.csv"
    random_ratings(np.random.default_rng(0), 300, 60, (5, 40)).to_csv(csv, index=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # first on the path, before the checkout's editable install
    fitted = subprocess.run([sys.executable, "-c", WHEEL_FIT, str(site), str(csv),
                             str(elsewhere)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=150)
    assert fitted.returncode == 0, fitted.stderr[-3000:]

    trained = run("train", "--config", REPO / "configs" / "ml100k.toml", "--dataset", csv, "--out", tmp_path / "checkout")
    assert trained.exit_code == 0, trained.output
    expected = (tmp_path / "checkout" / "best" / "model.safetensors").read_bytes()
    assert (elsewhere / "run" / "best" / "model.safetensors").read_bytes() == expected
    assert (elsewhere / "saved" / "checkpoint" / "model.safetensors").read_bytes() == expected
    assert (elsewhere / "saved" / "MODEL_CARD.md").is_file()
