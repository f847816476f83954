"""ML-100K, MeLU protocol, seed 0: personalised baselines must beat the non-personalised ones on new users."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.baselines import default_baselines
from metarec.data import load_dataset
from metarec.eval import mae_rmse
from metarec.tasks import make_split


@pytest.fixture(scope="module")
def ml100k_results(data_dir):
    split = make_split(load_dataset("ml-100k", data_dir=data_dir))
    low, high = split.dataset.rating_scale
    results = {}
    for model in default_baselines():
        model.fit(split)
        for scenario, tasks in split.test.items():
            pred = model.predict(tasks)
            assert np.isfinite(pred).all(), (model.name, scenario)
            assert (pred >= low).all() and (pred <= high).all(), (model.name, scenario)
            results[model.name, scenario] = mae_rmse(tasks, pred)
    print("\nML-100K (seed 0) MAE / RMSE")
    for (name, scenario), m in results.items():
        print(f"  {name:22s} {scenario:20s} {m['mae']:.4f} / {m['rmse']:.4f}")
    return results


@pytest.mark.realdata
def test_personalised_baselines_beat_non_personalised_on_new_users(ml100k_results):
    mae = {name: m["mae"] for (name, scenario), m in ml100k_results.items() if scenario == "new_users"}
    for personalised in ("user_item_bias", "matrix_factorization"):
        for floor in ("global_mean", "item_mean"):
            assert mae[personalised] < mae[floor], (personalised, floor, mae)


@pytest.mark.realdata
def test_rating_scale_is_one_to_five(data_dir):
    assert load_dataset("ml-100k", data_dir=data_dir).rating_scale == (1.0, 5.0)
