"""The CLI through typer's runner: exit codes, output, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metarec.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_describe_ml100k_json(data_dir):
    result = run("data", "describe", "ml-100k", "--json", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["users"], info["items"], info["ratings"]) == (943, 1682, 100000)
    assert sum(info["rating_histogram"].values()) == 100000


def test_split_json_is_deterministic(data_dir):
    args = ("data", "split", "ml-100k", "--protocol", "melu", "--seed", "0", "--json", "--data-dir", str(data_dir))
    first, second = run(*args), run(*args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout
    info = json.loads(first.stdout)
    assert set(info["scenarios"]) == {"warm", "new_users", "new_items", "new_users_new_items"}
    assert all(d["users"] > 0 and d["median_query"] == 10 for d in info["scenarios"].values())
    assert all(info["leakage_checks"].values())


def test_split_table_output(data_dir):
    result = run("data", "split", "ml-100k", "--protocol", "time", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert "new_users_new_items" in result.stdout and "FAILED" not in result.stdout


def test_unknown_dataset_is_one_line_error():
    result = runner.invoke(app, ["data", "describe", "no-such-dataset"])
    assert result.exit_code == 1
    assert "unknown dataset 'no-such-dataset'" in result.output
    assert "Traceback" not in result.output


def test_missing_data_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["data", "describe", "ml-100k"])
    assert result.exit_code == 1
    assert "METAREC_DATA_DIR" in result.output and "metarec data fetch ml-100k" in result.output


def test_corrupt_file_error_names_file_line_field(data_dir, tmp_path):
    folder = tmp_path / "ml-100k"
    shutil.copytree(data_dir / "ml-100k", folder)
    lines = (folder / "u.data").read_text().splitlines()
    lines[4] = "1\t2\tfive\t881250949"
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "describe", "ml-100k", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "u.data" in result.output and "line 5" in result.output and "rating" in result.output


@pytest.mark.slow
def test_train_evaluate_recommend(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    out = tmp_path / "run"
    result = run("train", "--dataset", "ml-100k", "--model", "feature-mlp", "--algorithm", "fomaml", "--epochs", "2",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "best" / "model.safetensors").exists() and (out / "metrics.jsonl").exists()
    result = run("evaluate", str(out), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores) == {"warm", "new_users", "new_items", "new_users_new_items"}
    assert all(0 < m["mae"] < 2 for m in scores.values())
    alone = json.loads(run("evaluate", str(out), "--json", "--no-user-history").stdout)
    assert alone["new_users"] == scores["new_users"]  # new users have no history
    assert alone["new_items"]["mae"] != scores["new_items"]["mae"]  # meta-train users do
    few = json.loads(run("evaluate", str(out), "--json", "--history-max-new-support", "10").stdout)
    assert few["warm"] == scores["warm"]  # no new-item support ratings: the history either way
    assert few["new_items"]["mae"] != scores["new_items"]["mae"]  # by default every task gets it
    # a model without the fold-in adapts on history rows like on support rows: where they go makes no difference
    joined = json.loads(run("evaluate", str(out), "--json", "--history-in-support").stdout)
    assert joined == scores
    result = run("recommend", str(out), "--rate", "50:5", "--rate", "181:4", "--rate", "nope:3", "--k", "5", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert len(answer["items"]) == 5 and answer["unknown_item_ids"] == ["nope"]
    assert all(item["item_id"] not in ("50", "181") for item in answer["items"])
    bad = runner.invoke(app, ["recommend", str(out), "--rate", "50:9"])
    assert bad.exit_code == 1 and "not in [1, 5]" in bad.output
    result = run("onboard", str(out), "--n", "4", "--strategy", "pop-entropy", "--json")
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)["items"]
    assert len(chosen) == 4 and len({c["item_id"] for c in chosen}) == 4 and all(c["title"] for c in chosen)
    bad = runner.invoke(app, ["onboard", str(out), "--strategy", "astrology"])
    assert bad.exit_code == 1 and "unknown onboarding strategy" in bad.output


def test_train_item_id_residual_flag_reaches_the_saved_config(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[2] / "configs" / "ml100k.toml"
    result = run("train", "--dataset", "ml-100k", "--config", str(config), "--item-id-residual",
                 "--epochs", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "item_id_residual = true" in (out / "config.toml").read_text()
    from metarec.meta.checkpoint import load_checkpoint

    assert load_checkpoint(out / "best").learner.model.item_id_residual
    bad = runner.invoke(app, ["train", "--dataset", "ml-100k", "--model", "feature-mlp", "--item-ids", "--item-id-residual",
                              "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "item_id_residual needs" in bad.output


def test_train_rejects_bad_config(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[meta]\nalgorithm = 'magic'\n")
    result = runner.invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "[meta] algorithm = 'magic': Input should be 'maml'" in result.output
    config.write_text("[meta]\ninner_stepz = 3\n")
    result = runner.invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "[meta] has unknown key(s) ['inner_stepz']" in result.output  # "[meta]" not eaten


@pytest.mark.parametrize("toml,message", [
    ('[train]\nepochs = "abc"\n', "[train] epochs = 'abc': Input should be a valid integer"),
    ("[model]\nhidden = [64, 'x']\n", "[model] hidden[1] = [64, 'x']: Input should be a valid integer"),
    ("[meta]\nouter_lr = [0.1]\n", "[meta] outer_lr = [0.1]: Input should be a valid number"),
    ("[train]\nresample_query = 'maybe'\n", "[train] resample_query = 'maybe': Input should be a valid boolean"),
])
def test_a_wrong_type_in_the_config_names_section_and_key(tmp_path, toml, message):
    config = tmp_path / "run.toml"
    config.write_text(toml)
    result = runner.invoke(app, ["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_version():
    from metarec import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"metarec {__version__}"


@pytest.mark.parametrize("module", ["metarec", "metarec.cli"])
def test_python_dash_m_runs_the_command_line(module):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in ("train", "onboard", "serve", "demo", "data"))
