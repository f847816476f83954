"""A user's own CSV trio (interactions / users / items) through the CLI: column mapping, categorical
overrides, the automatic recipe, evaluation and the benchmark, on synthetic books whose ratings follow an
integer-coded publisher."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.data.loaders.registry import load_data
from metarec.meta.run import DataConfig

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def book_tables(tmp_path_factory) -> Path:
    """240 readers x 100 books, 40 ratings each, 15 of them of the 20 latest books (the new items). A book's rating is its publisher's effect (publisher codes
    0..5 with no order: 3 is not "between" 2 and 4) plus the reader's bias; the author id is noise."""
    folder = tmp_path_factory.mktemp("books")
    rng = np.random.default_rng(0)
    n_users, n_items = 240, 100
    publisher = rng.integers(0, 6, n_items)
    effect = np.array([1.2, -1.0, 0.8, -1.2, 1.0, -0.8])[publisher]
    pd.DataFrame({"bookId": [f"b{i}" for i in range(n_items)], "publisher": publisher,
                  "author_id": rng.integers(100, 130, n_items), "pages": rng.integers(80, 600, n_items)}
                 ).to_csv(folder / "books.csv", index=False)
    pd.DataFrame({"userId": [f"r{u}" for u in range(n_users)], "age": rng.integers(18, 70, n_users)}
                 ).to_csv(folder / "readers.csv", index=False)
    bias = rng.normal(0, 0.5, n_users)
    release = rng.uniform(0, 0.8, n_items)  # a book is rated only after it appears: the latest are new items
    rows = []
    latest = np.argsort(release)[-20:]
    older = np.setdiff1d(np.arange(n_items), latest)
    for u in range(n_users):
        for i in np.concatenate([rng.choice(latest, 15, replace=False), rng.choice(older, 25, replace=False)]):
            rows.append((f"r{u}", f"b{i}", float(np.clip(np.rint(3 + effect[i] + bias[u] + rng.normal(0, 0.3)), 1, 5)),
                         int(1_600_000_000 + 1e7 * rng.uniform(release[i], 1.0))))
    pd.DataFrame(rows, columns=["userId", "bookId", "score", "when"]).to_csv(folder / "ratings.csv", index=False)
    return folder


def _data_args(folder: Path) -> list[str]:
    return ["--dataset", str(folder / "ratings.csv"), "--users", str(folder / "readers.csv"),
            "--items", str(folder / "books.csv"), "--column", "user=userId", "--column", "item=bookId",
            "--column", "rating=score", "--column", "timestamp=when", "--attribute", "publisher=categorical"]


def test_the_override_makes_an_integer_code_a_category(book_tables):
    guessed = load_data(DataConfig(dataset=str(book_tables / "ratings.csv"), items=str(book_tables / "books.csv"),
                                   columns={"user": "userId", "item": "bookId", "rating": "score"}))
    assert guessed.item_schema["publisher"].kind == "numeric"  # a plain integer column: bucketised by value
    assert guessed.item_schema["author_id"].kind == "categorical"  # an id by its name
    given = load_data(DataConfig(dataset=str(book_tables / "ratings.csv"), items=str(book_tables / "books.csv"),
                                 columns={"user": "userId", "item": "bookId", "rating": "score"},
                                 attributes={"publisher": "categorical"}))
    assert given.item_schema["publisher"].kind == "categorical"
    assert given.n_users == 240 and given.n_items == 100 and given.n_ratings == 240 * 40


@pytest.mark.slow
def test_csv_trio_trains_with_the_recipe_evaluates_and_benchmarks(book_tables, tmp_path):
    out = tmp_path / "run"
    result = run("train", *_data_args(book_tables), "--epochs", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["searched"] and len(recipe["trials"]) >= 4  # the automatic recipe ran on validation users
    assert all(np.isfinite(t["val_score"]) for t in recipe["trials"])
    saved = tomllib.loads((out / "config.toml").read_text())["data"]
    assert saved["columns"] == {"user": "userId", "item": "bookId", "rating": "score", "timestamp": "when"}
    assert saved["attributes"] == {"publisher": "categorical"} and saved["users"].endswith("readers.csv")
    assert (out / "best" / "model.safetensors").exists()

    result = run("evaluate", str(out), "--json")  # the run folder alone finds and maps the tables again
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert 0 < scores["new_users"]["mae"] < 1.5

    bench = tmp_path / "bench"
    result = run("benchmark", *_data_args(book_tables), "--quick", "--out", str(bench))
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(bench / "results.csv")
    mae = rows[rows["metric"] == "mae"]
    assert {"maml", "bias", "mf"} <= set(mae["method"])
    assert {"new_users", "new_users_new_items"} <= set(mae["scenario"])
    assert set(mae["k"]) >= {0, 1, 5} and np.isfinite(mae["value"]).all()  # the K-curve (k 0: whole support)
    assert "K-curve" in (bench / "results.md").read_text()


def test_the_toml_maps_the_same_tables(book_tables, tmp_path):
    config = tmp_path / "books.toml"
    config.write_text(
        "[data]\n"
        f'dataset = "{book_tables / "ratings.csv"}"\nusers = "{book_tables / "readers.csv"}"\n'
        f'items = "{book_tables / "books.csv"}"\n'
        'columns = { user = "userId", item = "bookId", rating = "score" }\n'
        'attributes = { "items.publisher" = "categorical", "users.age" = "numeric" }\n'
        "[train]\nepochs = 1\n", encoding="utf-8")
    out = tmp_path / "run"
    result = run("train", "--config", str(config), "--no-search", "--out", str(out))
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((out / "config.toml").read_text())["data"]
    assert saved["attributes"] == {"items.publisher": "categorical", "users.age": "numeric"}
    assert not (out / "recipe.json").exists()  # --no-search: the recipe's base plus the TOML, nothing chosen


def test_an_unknown_attribute_column_is_a_one_line_error(book_tables, tmp_path):
    args = _data_args(book_tables)
    args[args.index("publisher=categorical")] = "publisher_name=categorical"
    result = runner.invoke(app, ["train", *args, "--epochs", "1", "--no-search", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "publisher_name" in result.output and "Traceback" not in result.output
