"""Shared fixtures. Real datasets are read in place from ``$METAREC_DATA_DIR`` (default ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
# One marker file per dataset folder; CI always has them, a bare checkout may not.
DATA_MARKERS = (
    "ml-100k/u.data",
    "ml-1m/users.dat",
    "ml-1m/movies.dat",
    "ml-1m-melu-extra/movies_extrainfos.dat",
    "hetrec2011-lastfm-2k/user_artists.dat",
)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread in the test process, from the first test on, as the command line runs (a run's
    ``train.threads``, 1 in the recipe). The library's Trainer applies it only while it trains, so scoring
    would otherwise run on every core: on a busy 2-core machine OpenMP's spinning threads make that up to
    30x slower (the pooled-history sweep of tests/test_validation_sweep.py: 7 s on one thread, 219 s on two
    beside a running benchmark). Subprocesses keep their own setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _data_root() -> Path:
    return Path(os.environ.get("METAREC_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Where real data would be (``$METAREC_DATA_DIR``), present or not: for tests with a synthetic fallback."""
    return _data_root()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data root. Without its files a test is skipped on a developer's machine, but fails
    under CI (``CI`` set), where the data are always provided: a silent skip there would hide a break."""
    root = _data_root()
    missing = [m for m in DATA_MARKERS if not (root / m).exists()]
    if not (root / "ml-1m" / "ratings.dat").exists() and not (root / "ml-1m" / "ratings.dat.gz").exists():
        missing.append("ml-1m/ratings.dat[.gz]")
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI: real data not found under {root} (missing: {', '.join(missing)})")
    if missing:
        pytest.skip(f"real data not found under {root} (missing: {', '.join(missing)})")
    return root


def tiny_onboarding_dataset(seed: int = 0, n_users: int = 80, n_items: int = 60):
    """A small dataset with a long-tailed item popularity, as onboarding meets it."""
    import numpy as np
    import pandas as pd

    from metarec.data.dataset import RatingDataset

    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n_users)], "gender": rng.choice(["F", "M"], n_users)})
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)], "genre": rng.choice(["a", "b", "c"], n_items),
                          "year": rng.integers(1990, 2000, n_items).astype(float)})
    from tiny_data import random_ratings

    ratings = random_ratings(rng, n_users, n_items, (16, 40), popularity=1.0 / np.arange(1, n_items + 1))
    return RatingDataset.from_frames("tiny", ratings, users, items, rating_scale=(1.0, 5.0),
                                     meta={"new_item_rule": {"release_year_from": 1998}})


@pytest.fixture(scope="session")
def tiny_trained():
    """(split, meta-learner) of a 2-epoch MAML run on :func:`tiny_onboarding_dataset`: for the onboarding
    strategies (tests/onboarding) and the onboarding experiment (tests/eval)."""
    from metarec.meta.run import RunConfig
    from metarec.meta.trainer import Trainer
    from metarec.tasks import SplitConfig, make_split

    split = make_split(tiny_onboarding_dataset(), SplitConfig(seed=0, test_user_fraction=0.25, val_user_fraction=0.2))
    cfg = RunConfig.preset("feature-mlp", "maml").override("train", epochs=2, patience=2)
    cfg = cfg.override("model", embedding_size=8, hidden=[16], item_id_embedding=True)
    trainer = Trainer(cfg, split=split)
    trainer.fit()
    return split, trainer.restore_best()


@pytest.fixture
def mf_at_its_defaults(monkeypatch: pytest.MonkeyPatch) -> Callable[[object], None]:
    """``patch(namespace)``: within the test, the ``make_method`` that ``namespace`` (a module that imported
    it) calls makes MF with one candidate, its defaults (20 factors, reg 10, bias reg 3, the seed it is
    given), instead of the 3 x 3 grid and the bias-penalty step: 11 ALS fits per seed become 1. For tests
    whose property is not MF's grid (tests/eval/test_benchmark.py's quick benchmark test checks the grid);
    every other method is the benchmark's own."""
    from metarec.baselines import MatrixFactorizationConfig
    from metarec.eval.benchmark import make_method

    def make(name: str, config, seed: int = 0):
        method = make_method(name, config, seed)
        if name == "mf":
            method.candidates, method.refine = method.candidates[4:5], None
            made = method.candidates[0]().config
            assert made == MatrixFactorizationConfig(seed=seed), f"the grid's 5th point is not MF's defaults: {made}"
        return method

    def patch(namespace: object) -> None:
        assert getattr(namespace, "make_method") is make_method, namespace  # patch where it is called
        monkeypatch.setattr(namespace, "make_method", make)

    return patch
