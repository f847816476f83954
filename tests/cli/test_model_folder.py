"""One model-folder format: every command reads a ``rec.save()`` folder as it reads a ``metarec train``
run folder, and both carry a MODEL_CARD.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from metarec.cli import app
from tiny_data import random_ratings

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, saved folder) of one 1-epoch model on the synthetic dataset (reloadable by name)."""
    import torch

    from metarec.data import load_dataset
    from metarec.meta.run import RunConfig
    from metarec.serve import ColdStartRecommender

    root = tmp_path_factory.mktemp("model-folder")
    config = (RunConfig.preset("feature-mlp", "maml").override("train", epochs=1, threads=1)
              .override("model", embedding_size=8, hidden=[16], item_id_embedding=True))
    previous = torch.get_num_threads()
    try:
        rec = ColdStartRecommender(replicas=1).fit(load_dataset("synthetic"), config=config, run_dir=root / "run")
    finally:
        torch.set_num_threads(previous)
    return root / "run", rec.save(root / "saved")


def test_recommend_reads_a_saved_folder(folders):
    run_dir, saved = folders
    answers = []
    for folder in (run_dir, saved):
        result = run("recommend", folder, "--rate", "i0:5", "--rate", "i1:1", "--k", "5", "--json")
        assert result.exit_code == 0, result.output
        answers.append([(x["item_id"], round(x["score"], 5)) for x in json.loads(result.stdout)["items"]])
    assert answers[0] == answers[1] and len(answers[0]) == 5


def test_evaluate_reads_a_saved_folder(folders):
    """Refused before ("config.toml: config file not found"); now the same numbers as the run folder."""
    run_dir, saved = folders
    results = []
    for folder in (run_dir, saved):
        result = run("evaluate", folder, "--json")
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.stdout))
    assert results[0] == results[1] and results[0]


def test_onboard_reads_a_saved_folder(folders):
    run_dir, saved = folders
    rounds = []
    for folder in (run_dir, saved):
        result = run("onboard", folder, "--n", "5", "--strategy", "popular", "--json")
        assert result.exit_code == 0, result.output
        rounds.append(json.loads(result.stdout)["items"])
    assert rounds[0] == rounds[1] and len(rounds[0]) == 5


def test_serve_loads_both_folders(folders):
    from metarec.serve import ColdStartRecommender

    run_dir, saved = folders
    a, b = (ColdStartRecommender.load(f, replicas=1) for f in folders)
    assert a.model_version == b.model_version
    assert a.recommend({"i0": 5.0}, k=3).equals(b.recommend({"i0": 5.0}, k=3))


def test_every_model_folder_has_a_model_card(folders):
    for folder in folders:
        card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert "**Dataset:** synthetic" in card and "ratings" in card  # data and sizes
        assert "feature-mlp" in card and "[model]" in card  # the configuration
        assert "Selected epoch:** 0" in card and "val_mae" in card  # validation metrics
        assert "metarec version:** " in card and "Date written:** 20" in card
        assert "## Intended use" in card and "Cold-start rating prediction" in card and "## Limits" in card
    assert "model_version:** `" in (folders[1] / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert not list(folders[0].glob(".*.tmp")) and not list(folders[1].parent.glob(".*.tmp"))


def test_model_card_records_the_recipe_and_data_sizes(tmp_path):
    """A fit that searches: the card names the recipe's choice and the split's sizes."""
    from metarec.meta.recipe import recipe_base
    from metarec.serve import ColdStartRecommender

    frame = random_ratings(np.random.default_rng(1), 200, 40, (5, 30))
    rec = ColdStartRecommender(replicas=1).fit(frame, config=recipe_base().override("train", epochs=2), search=True,
                                               run_dir=tmp_path / "run")
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text(encoding="utf-8")
    line = next(x for x in card.splitlines() if x.startswith("- **Recipe** (chosen on validation users only"))
    assert set(line.split("trainings): ", 1)[1].split(", ")) == {f"{k} = {v}" for k, v in recipe["chosen"].items()}
    assert f"200 users, 40 items, {len(frame)} ratings" in card
    saved = rec.save(tmp_path / "saved")
    assert line in (saved / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_a_model_fitted_on_a_frame_says_why_evaluate_needs_its_data(tmp_path):
    """Its data lived only in memory: recommend works, evaluate says in one line what it lacks."""
    from metarec.meta.recipe import recipe_base
    from metarec.serve import ColdStartRecommender

    frame = random_ratings(np.random.default_rng(2), 120, 30, (5, 25))
    config = recipe_base().override("train", epochs=1)  # id-only items: the recipe feeds their id vectors
    saved = ColdStartRecommender(replicas=1).fit(frame, config=config).save(tmp_path / "saved")
    assert run("recommend", saved, "--rate", "i0:4", "--json").exit_code == 0
    result = run("evaluate", saved)
    assert result.exit_code == 1
    assert "cannot be loaded again" in result.stderr and len(result.stderr.strip().splitlines()) == 1
