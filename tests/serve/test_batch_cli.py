"""`metarec recommend --input/--out`, `metarec export-items` and `metarec similar-items`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from metarec.cli import app as cli_app
from metarec.errors import DataError
from metarec.serve.batch import recommend_file, write_table

runner = CliRunner()


def _lines(path: Path, bodies: list[object]) -> Path:
    path.write_text("\n".join(b if isinstance(b, str) else json.dumps(b) for b in bodies) + "\n", encoding="utf-8")
    return path


def _bodies(ids: list[str], serve_data) -> list[dict]:
    return [{"user_id": "ann", "ratings": [{"item_id": ids[0], "rating": 5}, {"item_id": ids[3], "rating": 1}], "k": 4},
            {"ratings": [{"item_id": ids[6], "rating": 4}], "user": serve_data.new_user(2), "k": 2},
            {"user_id": 17, "ratings": [{"item_id": ids[9], "rating": 2}, {"item_id": "no-such", "rating": 3}]}]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_recommend_file(saved_dir, recommender, popular_ids, serve_data, tmp_path, suffix):
    source = _lines(tmp_path / "users.jsonl", _bodies(popular_ids, serve_data))
    out = tmp_path / f"recs{suffix}"
    result = runner.invoke(cli_app, ["recommend", str(saved_dir), "--input", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
             ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix](out)
    assert list(table.columns) == ["user_id", "rank", "item_id", "score"]
    assert table["user_id"].astype(str).tolist() == ["ann"] * 4 + ["2"] * 2 + ["17"] * 10  # no user_id: the line
    assert table.groupby("user_id")["rank"].apply(list).to_dict() == {"17": list(range(1, 11)), "2": [1, 2],
                                                                     "ann": [1, 2, 3, 4]}
    want = recommender.recommend_records({popular_ids[0]: 5, popular_ids[3]: 1}, k=4).items
    ann = table[table["user_id"].astype(str) == "ann"]
    assert ann["item_id"].astype(str).tolist() == [i["item_id"] for i in want]
    np.testing.assert_allclose(ann["score"], [i["score"] for i in want], atol=1e-4)


@pytest.mark.parametrize("line, field", [
    ('{"ratings": [{"item_id": "X", "rating": 9}]}', "ratings.0.rating"),
    ('{"ratings": [{"item_id": "X", "rating": 4}], "k": 0}', "k"),
    ('{"ratings": [{"item_id": "X", "rating": 4}], "user": {"no_such_attribute": 1}}', "user"),
    ('{"ratings": [{"item_id": "X", "rating": 4}], "colour": 1}', "colour"),
    ('{"ratings": [{"item_id": "X"}]}', "ratings.0"),
    ('{"ratings": []}', "ratings"),
])
def test_bad_line_names_line_and_field(saved_dir, popular_ids, serve_data, tmp_path, line, field):
    good = json.dumps({"ratings": [{"item_id": popular_ids[0], "rating": 4}]})
    source = _lines(tmp_path / "users.jsonl", [good, "", line.replace('"X"', json.dumps(popular_ids[1]))])
    out = tmp_path / "recs.parquet"
    result = runner.invoke(cli_app, ["recommend", str(saved_dir), "--input", str(source), "--out", str(out)])
    assert result.exit_code == 1
    assert "line 3" in result.output and f"field '{field}'" in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".recs*"))  # nothing written, not even a temporary


def test_not_json_and_all_unknown(recommender, tmp_path):
    with pytest.raises(DataError, match="line 1.*not valid JSON"):
        recommend_file(recommender, _lines(tmp_path / "a.jsonl", ["{oops"]))
    with pytest.raises(DataError, match="line 2, field 'ratings'.*none of the rated items is known"):
        recommend_file(recommender, _lines(tmp_path / "b.jsonl", ["", {"ratings": [{"item_id": "nope", "rating": 3}]}]))


def test_write_table_is_atomic_and_knows_its_suffixes(tmp_path):
    frame = pd.DataFrame({"item_id": ["a"], "bias": [0.5], "vector": [np.array([1.0, 2.0], dtype=np.float32)]})
    target = tmp_path / "old.parquet"
    target.write_bytes(b"old")
    with pytest.raises(Exception):
        write_table(pd.DataFrame({"x": [object()]}), target)  # fails half-way: the old file stays
    assert target.read_bytes() == b"old" and not list(tmp_path.glob(".old*"))
    write_table(frame, tmp_path / "v.csv")
    assert list(pd.read_csv(tmp_path / "v.csv").columns) == ["item_id", "bias", "v0", "v1"]
    with pytest.raises(Exception, match="unknown output format"):
        write_table(frame, tmp_path / "v.xlsx")


def test_export_items_and_similar_items(neural_cf, neural_cf_dir, serve_data, tmp_path):
    out = tmp_path / "items.parquet"
    result = runner.invoke(cli_app, ["export-items", str(neural_cf_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert list(table.columns) == ["item_id", "bias", "vector"] and len(table) == neural_cf.n_items
    width = neural_cf.info()["model"]["factors"]
    assert {len(v) for v in table["vector"]} == {width}
    result = runner.invoke(cli_app, ["similar-items", str(neural_cf_dir), serve_data.item_id, "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in neural_cf.similar_items(serve_data.item_id, 4)]
    missing = runner.invoke(cli_app, ["similar-items", str(neural_cf_dir), "no-such-item"])
    assert missing.exit_code == 1 and "no-such-item" in missing.output


def test_export_items_of_a_model_without_item_vectors(saved_dir, tmp_path):
    result = runner.invoke(cli_app, ["export-items", str(saved_dir), "--out", str(tmp_path / "v.parquet")])
    assert result.exit_code == 1 and "no item vectors" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "v.parquet").exists()
