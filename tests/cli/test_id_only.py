"""A plain ``userId,movieId,stars`` table, no attribute files, mapped by a TOML: trained with the automatic
recipe, evaluated, recommended from and served. Ratings are an item effect plus a user bias, so a model
that learns the items' id vectors predicts them well, and one that cannot (no attributes) would not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from metarec.cli import app
from metarec.data.loaders.registry import load_data
from metarec.meta.run import DataConfig
from metarec.serve.app import create_app_from_dir

runner = CliRunner()
N_USERS, N_ITEMS, PER_USER = 200, 60, 25


@pytest.fixture(scope="module")
def plain_table(tmp_path_factory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("plain")
    rng = np.random.default_rng(0)
    effect = rng.choice([-1.5, -0.5, 0.5, 1.5], N_ITEMS)
    bias = rng.normal(0, 0.3, N_USERS)
    rows = [(u, 1000 + i, float(np.clip(np.rint(3 + effect[i] + bias[u] + rng.normal(0, 0.3)), 1, 5)))
            for u in range(N_USERS) for i in rng.choice(N_ITEMS, PER_USER, replace=False)]
    pd.DataFrame(rows, columns=["userId", "movieId", "stars"]).to_csv(folder / "ratings.csv", index=False)
    (folder / "plain.toml").write_text(
        "[data]\n"
        f'dataset = "{folder / "ratings.csv"}"\n'
        'columns = { user = "userId", item = "movieId", rating = "stars" }\n'
        "[train]\nepochs = 3\n", encoding="utf-8")
    return folder, effect


def test_the_table_loads_without_attributes(plain_table):
    folder, _ = plain_table
    data = load_data(DataConfig(dataset=str(folder / "ratings.csv"),
                                columns={"user": "userId", "item": "movieId", "rating": "stars"}))
    assert not data.user_schema and not data.item_schema
    assert (data.n_users, data.n_items, data.n_ratings) == (N_USERS, N_ITEMS, N_USERS * PER_USER)


@pytest.mark.slow
def test_trains_evaluates_recommends_and_serves(plain_table, tmp_path):
    folder, effect = plain_table
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(folder / "plain.toml"), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    recipe = json.loads((out / "recipe.json").read_text())
    assert "model.item_ids" not in recipe["searched"]  # nothing to search: the id vector is all an item has
    assert recipe["trials"] and all(np.isfinite(t["val_score"]) for t in recipe["trials"])

    result = runner.invoke(app, ["evaluate", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    # warm items: their ids carry the item effect (a predictor ignoring items errs by ~1 point on average)
    assert scores["warm"]["mae"] < 0.75 and scores["new_users"]["mae"] < 0.75

    best, worst = 1000 + int(np.argmax(effect)), 1000 + int(np.argmin(effect))
    result = runner.invoke(app, ["recommend", str(out), "--rate", f"{best}:5", "--rate", f"{worst}:1", "--k", "5",
                                 "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    top = [int(item["item_id"]) for item in json.loads(result.stdout)["items"]]
    assert len(top) == 5 and best not in top and worst not in top  # rated items are not recommended again
    assert np.mean(effect[np.asarray(top) - 1000]) > 0.5  # the top-5 are items rated well by everyone

    with TestClient(create_app_from_dir(out)) as client:
        response = client.post("/v1/recommend", json={"ratings": [{"item_id": str(best), "rating": 5}], "k": 3})
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) == 3
        response = client.post("/v1/recommend", json={"ratings": [{"item_id": str(best), "rating": 5}],
                                                      "user": {"age": 30}, "k": 3})
        assert response.status_code == 422, response.text  # the dataset has no user attributes to set


def test_feature_mlp_needs_item_ids_and_trains_with_them(plain_table, tmp_path):
    """The MLP over [user; item] embeddings has no input for an attribute-less item: a one-line error that
    says what to do; with id vectors (and no user attributes at all) it trains, on the hand-written K = 1
    kernel too, and its predictions follow the items' effects."""
    folder, effect = plain_table
    args = ["train", "--config", str(folder / "plain.toml"), "--model", "feature-mlp", "--epochs", "3"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "no-ids")])
    assert result.exit_code == 1 and "feature-mlp has no item input" in result.output and "--item-ids" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    result = runner.invoke(app, [*args, "--item-ids", "--out", str(tmp_path / "ids")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["recommend", str(tmp_path / "ids"), "--rate", "1000:4", "--k", "60", "--json"])
    assert result.exit_code == 0, result.output
    scores = {int(i["item_id"]): i["score"] for i in json.loads(result.stdout)["items"]}
    items = sorted(scores)
    assert np.corrcoef([scores[i] for i in items], [effect[i - 1000] for i in items])[0, 1] > 0.5
