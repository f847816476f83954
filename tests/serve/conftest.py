"""One tiny model meta-trained on ML-100K (2 epochs, ~2 s), shared by every serving test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metarec.data import load_dataset
from metarec.meta.run import RunConfig
from metarec.serve import ColdStartRecommender


@pytest.fixture(scope="package")
def ml100k(data_dir: Path):
    return load_dataset("ml-100k", data_dir=data_dir)


@pytest.fixture(scope="package")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve") / "run"


@pytest.fixture(scope="package")
def recommender(ml100k, run_dir: Path, data_dir: Path) -> ColdStartRecommender:
    # one torch thread: on a busy machine OpenMP's spinning threads make this tiny run 10x slower
    previous = torch.get_num_threads()
    config = (RunConfig.preset("feature-mlp", "maml").override("train", epochs=2, threads=1)
              .override("data", data_dir=str(data_dir)))
    try:
        return ColdStartRecommender().fit(ml100k, config=config, run_dir=run_dir)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="package")
def saved_dir(recommender: ColdStartRecommender, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recommender.save(tmp_path_factory.mktemp("serve") / "recommender")


@pytest.fixture(scope="package")
def popular_ids(recommender: ColdStartRecommender) -> list[str]:
    """Ids surely in the catalogue and seen in training (the most-rated ones)."""
    return recommender.onboarding_items(40)["item_id"].tolist()
