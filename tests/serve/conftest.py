"""One tiny model meta-trained for 2 epochs (a few seconds), shared by every serving test.

On ML-100K when ``$METAREC_DATA_DIR`` holds it, else on the synthetic dataset, so that serving is tested
on a bare checkout too; the tests read what differs (attributes, an item to look up) from
:class:`ServeData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from metarec.data import load_dataset
from metarec.data.dataset import RatingDataset
from metarec.meta.run import RunConfig
from metarec.serve import ColdStartRecommender


@dataclass(frozen=True)
class ServeData:
    """The dataset the served model was trained on, and what a test needs to know of it."""

    dataset: RatingDataset
    new_user: Callable[[int], dict]  # valid attributes of a new user, varied by the argument
    item_id: str  # an item with a title, a multi-valued attribute and an integer year
    title_prefix: str
    multi_column: str


@pytest.fixture(scope="package")
def serve_data(data_root: Path) -> ServeData:
    if (data_root / "ml-100k" / "u.data").exists():
        return ServeData(load_dataset("ml-100k", data_dir=data_root),
                         lambda i: {"gender": "MF"[i % 2], "age": 18 + i % 50}, "50", "Star Wars", "genres")
    return ServeData(load_dataset("synthetic"),  # what the run folder's config reloads
                     lambda i: {"gender": f"gender_{i % 2}", "age_group": f"age_group_{i % 5}"}, "i0",
                     "Synthetic item 0", "tags")


@pytest.fixture(scope="package")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve") / "run"


@pytest.fixture(scope="package")
def recommender(serve_data: ServeData, run_dir: Path, data_root: Path) -> ColdStartRecommender:
    # one torch thread: on a busy machine OpenMP's spinning threads make this tiny run 10x slower
    previous = torch.get_num_threads()
    config = (RunConfig.preset("feature-mlp", "maml").override("train", epochs=2, threads=1)
              .override("data", data_dir=str(data_root)))
    try:
        return ColdStartRecommender().fit(serve_data.dataset, config=config, run_dir=run_dir)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="package")
def saved_dir(recommender: ColdStartRecommender, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recommender.save(tmp_path_factory.mktemp("serve") / "recommender")


@pytest.fixture(scope="package")
def popular_ids(recommender: ColdStartRecommender) -> list[str]:
    """Ids surely in the catalogue and seen in training (the most-rated ones)."""
    return recommender.onboarding_items(40)["item_id"].tolist()


@pytest.fixture(scope="package")
def neural_cf(serve_data: ServeData, data_root: Path) -> ColdStartRecommender:
    """The neural-cf preset for 1 epoch: a model with item vectors (similar items, export)."""
    previous = torch.get_num_threads()
    config = (RunConfig.preset("neural-cf", "maml").override("train", epochs=1, threads=1)
              .override("data", data_dir=str(data_root)))
    try:
        return ColdStartRecommender(replicas=2).fit(serve_data.dataset, config=config)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="package")
def neural_cf_dir(neural_cf: ColdStartRecommender, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return neural_cf.save(tmp_path_factory.mktemp("serve") / "neural-cf")
