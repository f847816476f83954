"""``metarec train`` with the automatic recipe, killed in the middle of its search, then ``--resume``: the
search replays the trials its journal recorded, trains only the rest, and ends where the search that was
never stopped ended (same trials, same choice, same trained parameters)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import metarec.meta.recipe as recipe
from metarec.cli import app
from metarec.cli.options import split_of
from metarec.data.loaders.registry import load_data
from metarec.errors import MetarecError
from metarec.meta.checkpoint import load_checkpoint
from metarec.meta.learner import MetaLearner
from metarec.meta.run import RunConfig
from metarec.meta.search_journal import SearchJournal
from metarec.serve import ColdStartRecommender

runner = CliRunner()


class Killed(Exception):
    """What the test's dying meta-step raises: the process killed mid-trial."""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """A small ratings table (an item effect plus a user bias) and a TOML training 2 epochs per trial."""
    folder = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(3)
    effect, bias = rng.choice([-1.5, -0.5, 0.5, 1.5], 50), rng.normal(0, 0.3, 180)
    rows = [(u, i, float(np.clip(np.rint(3 + effect[i] + bias[u] + rng.normal(0, 0.4)), 1, 5)))
            for u in range(180) for i in rng.choice(50, 22, replace=False)]
    pd.DataFrame(rows, columns=["user", "item", "stars"]).to_csv(folder / "ratings.csv", index=False)
    (folder / "run.toml").write_text(f'[data]\ndataset = "{folder / "ratings.csv"}"\n'
                                     'columns = { user = "user", item = "item", rating = "stars" }\n[train]\nepochs = 2\n', encoding="utf-8")
    return folder / "run.toml"


def train(*args: str):
    return runner.invoke(app, ["train", *args], catch_exceptions=False)


def records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def whole(config, tmp_path_factory) -> Path:
    """The search never stopped."""
    out = tmp_path_factory.mktemp("whole") / "run"
    with one_thread():
        assert train("--config", str(config), "--out", str(out)).exit_code == 0
    assert len(json.loads((out / "recipe.json").read_text())["trials"]) >= 4
    assert not (out / "search").exists()  # the journal goes when the run is written
    return out


@contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("kill", ["in the third trial", "after the last trial"])
def test_a_killed_search_resumes_to_the_uninterrupted_searchs_run(kill, config, whole, tmp_path, monkeypatch):
    """Killed in a trial (the trials after it are trained on resume) or after every trial was recorded
    (the best trial's run is restored from the journal): the run is the uninterrupted search's."""
    chosen = json.loads((whole / "recipe.json").read_text())
    out = tmp_path / "killed"
    journal = SearchJournal(out / "search")
    step, counted = MetaLearner.meta_step, []

    def dying_step(self, *args, **kwargs):
        if len(journal.records()) == 2:  # two trials finished: die in the third one's second meta-step
            counted.append(1)
            if len(counted) == 2:
                raise Killed
        return step(self, *args, **kwargs)

    def dying_history_choice(*args, **kwargs):
        raise Killed

    with one_thread():
        if kill == "in the third trial":
            monkeypatch.setattr(MetaLearner, "meta_step", dying_step)
        else:
            monkeypatch.setattr(recipe, "choose_history_scale", dying_history_choice)
        with pytest.raises(Killed):
            train("--config", str(config), "--out", str(out))
        monkeypatch.undo()
        done = len(journal.records())
        assert done == (2 if kill == "in the third trial" else len(chosen["trials"]))
        assert [r["index"] for r in journal.records()] == list(range(done)) and not (out / "config.toml").exists()
        assert len(list((out / "search").glob("trial-*"))) == 1  # only the best trial so far keeps its run
        refused = train("--out", str(out), "--resume", "--epochs", "3")
        assert refused.exit_code == 1 and "--epochs" in refused.output  # the search keeps its settings

        trained = []
        candidate = recipe.train_candidate

        def counting_candidate(*args, **kwargs):
            trained.append(args[2])
            return candidate(*args, **kwargs)

        monkeypatch.setattr(recipe, "train_candidate", counting_candidate)
        result = train("--out", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert len(trained) == len(chosen["trials"]) - done  # the recorded trials were replayed, not trained
    resumed = json.loads((out / "recipe.json").read_text())
    for run in (resumed, chosen):
        for trial in run["trials"]:
            trial.pop("seconds")
    assert resumed == chosen
    assert records(out / "metrics.jsonl") == records(whole / "metrics.jsonl")
    for name in ("best", "last"):
        a, b = load_checkpoint(out / name), load_checkpoint(whole / name)
        assert a.state == b.state, name
        for key, value in b.learner.named_meta_parameters().items():
            assert torch.equal(a.learner.named_meta_parameters()[key], value), (name, key)
    assert not (out / "search").exists() and (out / "MODEL_CARD.md").exists()


def test_a_journal_from_another_search_is_refused(config, tmp_path):
    """A journal is continued only by the search it records: same starting configuration, fixed settings,
    data sizes and trial settings; anything else is an error saying what differs."""
    base = RunConfig.from_toml(config)
    split = split_of(base)
    journal = SearchJournal(tmp_path / "run" / "search")
    journal.open(base, (), split)
    journal.open(base, (), split)  # the same search: continued
    with pytest.raises(MetarecError, match=r"differs in meta\)"):
        journal.open(base.override("meta", outer_lr=0.5), (), split)
    with pytest.raises(MetarecError, match="fixed settings"):
        journal.open(base, ("meta.outer_lr",), split)
    ratings = pd.read_csv(base.data.dataset)
    ratings.iloc[:-40].to_csv(tmp_path / "fewer.csv", index=False)
    with pytest.raises(MetarecError, match=r"data \(then"):
        journal.open(base, (), split_of(base.override("data", dataset=str(tmp_path / "fewer.csv"))))
    (journal.folder / "trials.jsonl").write_text(json.dumps(
        {"index": 0, "settings": {"meta.outer_lr": 0.5}, "val_score": 1.0, "best_epoch": 0, "epochs_run": 1,
         "seconds": 1.0, "val_curve": {}, "best": True}) + "\n")
    with pytest.raises(MetarecError, match="trial 0 ran with"):
        journal.replay(0, {"meta.outer_lr": 0.003})
    assert journal.replay(1, {"meta.outer_lr": 0.003}) is None  # not recorded: it is trained
    (journal.folder / "trials.jsonl").write_text('{"index": 0, "sett')  # a line cut short by a kill
    assert journal.records() == []


def test_fit_in_a_run_folder_continues_its_search(config, tmp_path, monkeypatch):
    """``ColdStartRecommender.fit(run_dir=...)`` keeps the same journal: called again after a crash, it
    replays what was recorded and gives the uninterrupted search's model."""
    base = RunConfig.from_toml(config)
    dataset = load_data(base.data)
    run_dir, whole = tmp_path / "fit", tmp_path / "whole"
    with one_thread():
        ColdStartRecommender().fit(dataset, config=base, search=True, run_dir=whole)

    def dying_history_choice(*args, **kwargs):
        raise Killed

    with one_thread():
        monkeypatch.setattr(recipe, "choose_history_scale", dying_history_choice)
        with pytest.raises(Killed):
            ColdStartRecommender().fit(dataset, config=base, search=True, run_dir=run_dir)
        monkeypatch.undo()
        trained = []
        candidate = recipe.train_candidate
        monkeypatch.setattr(recipe, "train_candidate", lambda *a, **k: trained.append(1) or candidate(*a, **k))
        ColdStartRecommender().fit(dataset, config=base, search=True, run_dir=run_dir)
    assert trained == [] and not (run_dir / "search").exists()
    a, b = load_checkpoint(run_dir / "best"), load_checkpoint(whole / "best")
    for key, value in b.learner.named_meta_parameters().items():
        assert torch.equal(a.learner.named_meta_parameters()[key], value), key


def test_a_search_journal_is_not_resumed_under_torchrun(config, tmp_path, monkeypatch):
    """Every rank would write the one journal: a killed search resumes in one process."""
    base = RunConfig.from_toml(config)
    out = tmp_path / "run"
    SearchJournal(out / "search").open(base, (), split_of(base))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = train("--out", str(out), "--resume")
    assert result.exit_code == 1 and "not under torchrun" in result.output
