"""`metarec demo` through typer's runner, on small settings: the table, the plot, the sample user."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import DataError

if TYPE_CHECKING:
    from metarec.data.dataset import RatingDataset
    from metarec.demo import DemoResult

runner = CliRunner()


@pytest.mark.slow
def test_demo_ml100k_table_plot_and_top10(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("COLUMNS", "120")
    out = tmp_path / "demo"
    # one epoch (was 2): what is checked is the output's structure and ranges, not how far training got
    result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "1", "--no-download"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "ml-100k: 943 users" in text and "synthetic" not in text
    # one row per method and scenario: the adapted meta-learner, its initialisation and both baselines
    for method in ("meta fold-in, adapted", "meta fold-in, no adapt", "bias fold-in", "MF fold-in"):
        assert text.count(method) == 3, method
    for scenario in ("new users (", "new items (", "both new ("):
        assert scenario in text
    # the K-curve first: per scenario and K (and the whole support), MAML / bias / MF and the paired difference
    curve = text[text.index("A newcomer with K ratings"):text.index("Test users and items never seen")]
    rows = re.findall(r"│\s+(\d+|all) │\s+(\d+) │\s+(\S+) │\s+(\S+) │\s+(\S+) │\s+([+-]\d\.\d{4}) \[([+-]\d\.\d{4}), "
                      r"([+-]\d\.\d{4})\]", curve.replace("[bold]", "").replace("[/bold]", ""))
    assert [r[0] for r in rows] == ["1", "3", "5", "10", "20", "all"] * 2, curve
    for k, users, *maes, diff, low, high in rows:
        maes = [float(m) for m in maes]
        assert all(0 < m < 2 for m in maes) and float(low) <= float(diff) <= float(high)
        assert float(diff) == pytest.approx(maes[0] - min(maes[1:]), abs=2e-4)  # meta minus the better baseline
    assert "recipe chosen on validation users" in text and (out / "recipe.json").exists()
    table = text[text.index("Test users and items never seen"):]
    numbers = [float(x) for x in re.findall(r"│\s+(\d\.\d{4})\s+│\s+(\d\.\d{4})\s+│", table) for x in x]
    assert len(numbers) == 24 and all(0 <= x < 2 for x in numbers)
    plot = out / "demo.png"
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {plot}" in text.replace("\n", "")
    assert (out / "best" / "model.safetensors").exists()
    # the sample user: 5 rated movies with titles, then a top-10 of titled movies not among them
    block = text[text.index("rated 5 movies:"):]
    rated = re.findall(r"^\s+([1-5])\s+(\S.*\(\d{4}\))\s*$", block, flags=re.M)
    assert len(rated) == 5
    top = re.findall(r"│\s+(\d+) │ (\d+)\s+│\s+(\d\.\d\d) │ (.+?)\s+│", block)
    assert [int(r[0]) for r in top] == list(range(1, 11))
    titles = {t for _, t in rated}
    assert all(r[3] and r[3] not in titles for r in top)
    scores = [float(r[2]) for r in top]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_demo_offline_without_data_uses_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise DataError("download failed (ConnectionError: offline)")

    monkeypatch.setattr("metarec.data.fetch.fetch_dataset", offline)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    notices = [line for line in result.output.splitlines() if "synthetic dataset" in line]
    assert len(notices) == 1, result.output
    assert "bias fold-in" in result.stdout and (tmp_path / "demo" / "demo.png").exists()


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[RatingDataset, DemoResult, Path]:
    """(dataset, result, run folder) of one ``run_demo`` on tiny synthetic data (1 epoch, K = 1 and 3): the
    two tests below read the same run (neither changes it), so it is trained once, not twice."""
    from metarec import demo as module
    from metarec.data.synthetic import SyntheticConfig, make_synthetic

    small = make_synthetic(SyntheticConfig(n_users=240, n_items=120)).dataset
    folder = tmp_path_factory.mktemp("small-demo") / "demo"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "demo_dataset", lambda notice=None, download=True: (small, True))
        result = module.run_demo(folder, epochs=1, support_sizes=(1, 3))
    return small, result, folder


def test_demo_uses_the_packaged_recipe(small_demo):
    """`metarec demo` starts from the recipe shipped in the package (no configs/ folder needed) and records
    what the search chose; tiny synthetic data keeps it fast."""
    import json

    small, result, folder = small_demo
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["chosen"] == result.recipe["chosen"] and len(recipe["trials"]) == result.recipe["trials"] >= 6
    # the run's configuration is the packaged preset where the search does not choose
    from metarec.meta.recipe import recipe_base
    from metarec.meta.run import RunConfig

    base, ran = recipe_base(), RunConfig.from_toml(folder / "config.toml")
    assert (ran.model.kind, ran.meta.algorithm, ran.meta.adapt, ran.meta.inner_steps) == \
        (base.model.kind, base.meta.algorithm, base.meta.adapt, base.meta.inner_steps)
    assert (ran.data.dataset, ran.train.epochs) == (small.name, 1)
    assert set(result.k_curve["k"]) == {"1", "3", "all"}
    assert set(result.k_curve["scenario"]) <= {"new_users", "new_users_new_items"}


def test_demo_output_agrees_with_itself_and_with_evaluate(small_demo):
    """Tasks are not users (heavy users give several tasks); the closed-form meta-learner is not called
    MAML; and the demo's new-item MAE is the one `metarec evaluate` prints for the same run, under the
    same known-user history rule, which both show."""
    import io

    import numpy as np
    from rich.console import Console

    from metarec.cli.demo import print_demo
    from metarec.cli.options import history_limit
    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import evaluate_run, load_best
    from metarec.tasks import make_split
    from metarec.tasks.history import HISTORY_AS_PRIOR

    small, result, folder = small_demo
    split = make_split(small, RunConfig.from_toml(folder / "config.toml").split)
    tasks, users = len(split.meta_train), len(np.unique(split.meta_train.user_idx))
    assert f"{tasks} meta-train tasks from {users} users" in result.description
    buffer = io.StringIO()
    print_demo(result, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "MAML" not in text and "meta fold-in, adapted" in text
    assert "meta-learned fold-in (closed-form inner loop" in text
    assert "known users' history (new items): every task, as the prior of the fold-in" in text
    scores = evaluate_run(load_best(folder), split, history_max_new_support=history_limit(None),
                          history_as_prior=HISTORY_AS_PRIOR)
    demo_mae = result.table.set_index(["method", "scenario"]).loc[("maml", "new_items"), "mae"]
    assert demo_mae == pytest.approx(scores["new_items"]["mae"], abs=1e-4)
