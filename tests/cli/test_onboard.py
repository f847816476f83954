"""`metarec onboard --experiment` through typer's runner on a briefly trained ML-100K run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from metarec.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_onboard_experiment_json_and_errors(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    out = tmp_path / "run"
    # --no-search: the onboarding commands are under test, not the recipe (tests/cli/test_own_tables.py's);
    # one training instead of the search's several
    result = runner.invoke(app, ["train", "--dataset", "ml-100k", "--epochs", "1", "--item-ids", "--adapt", "head",
                                 "--no-search", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["onboard", str(out), "--experiment", "--users", "validation", "--budgets", "5,30",
                                 "--seeds", "0,1", "--strategies", "random,popular,greedy-info", "--json",
                                 "--out", str(tmp_path / "csv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["users"] == "validation" and answer["protocol"] == "shown"
    rows = answer["rows"]
    assert len(rows) == 2 * (2 + 1 + 1)  # budgets x (random over 2 seeds, popular, greedy-info)
    assert all(r["mean_shown"] == r["budget"] for r in rows)
    assert all(0 <= r["no_answer_users"] <= r["users"] for r in rows)
    summary = {(s["strategy"], s["budget"]): s for s in answer["summary"]}
    assert set(summary) == {(s, b) for s in ("random", "popular", "greedy-info") for b in (5, 30)}
    assert "mae_vs_random" in summary[("popular", 30)] and "mae_vs_popular" in summary[("greedy-info", 30)]
    assert (tmp_path / "csv" / "onboarding_validation_shown_summary.csv").exists()
    # --pool-run: another run's held-out users join the paired comparison (here the same run again)
    result = runner.invoke(app, ["onboard", str(out), "--experiment", "--users", "validation", "--budgets", "5",
                                 "--seeds", "0", "--strategies", "random,adaptive", "--json", "--pool-run", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pooled = json.loads(result.stdout)
    assert len(pooled["rows"]) == 2 * 2 and {r["experiment"] for r in pooled["rows"]} == {0, 1}
    assert pooled["summary"][1]["strategy"] == "adaptive" and "mae_vs_random" in pooled["summary"][1]

    result = runner.invoke(app, ["onboard", str(out), "--n", "3", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert len(items) == 3 and all(i["title"] for i in items)
    first = [i["item_id"] for i in items]
    result = runner.invoke(app, ["onboard", str(out), "--n", "3", "--json", "--shown", ",".join(first),
                                 "--rated", first[0]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["strategy"] == "adaptive" and len(answer["items"]) == 3
    assert not {i["item_id"] for i in answer["items"]} & set(first)  # the next round, not the first again
    result = runner.invoke(app, ["onboard", str(out), "--n", "2", "--json", "--strategy", "popular", "--shown", first[0]],
                           catch_exceptions=False)
    assert first[0] not in [i["item_id"] for i in json.loads(result.stdout)["items"]]

    for args, message in ((["--experiment", "--protocol", "telepathy"], "unknown onboarding protocol 'telepathy'"),
                          (["--experiment", "--users", "everyone"], "--users"),
                          (["--experiment", "--budgets", "ten"], "--budgets"),
                          (["--strategy", "random"], "no fixed order"),
                          (["--shown", "no-such-item"], "shown: unknown item id"),
                          (["--experiment", "--strategies", "popular,astrology"], "unknown onboarding strategy 'astrology'")):
        bad = runner.invoke(app, ["onboard", str(out), *args])
        assert bad.exit_code == 1 and message in bad.output and "Traceback" not in bad.output, args
