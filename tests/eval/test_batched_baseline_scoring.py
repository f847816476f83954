"""A baseline's full-catalogue scorer folds every task in at once (``score_catalogue``); it must give what
the per-task ``score_items`` gives, to 1e-12, for every task and candidate set (the catalogue minus the
task's support): on users seen in training (their trained parameters as the fold-in prior), on new users,
on new items, with the pooled new-item fold-in, in blocks of tasks, and without the batched method."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import pytest

import metarec.eval.benchmark.methods as methods
from metarec.baselines import (
    ContentBased, GlobalMean, ItemMean, ItemMeanConfig, MatrixFactorization, MatrixFactorizationConfig, MostPopular,
    UserItemBias, UserItemBiasConfig,
)
from metarec.eval.benchmark.methods import BaselineMethod
from metarec.tasks import ColdStartSplit, make_split
from metarec.tasks.taskset import TaskSet

# the benchmark's baselines, each at one point of its grid (MF with fewer sweeps: the fit is not under test)
MODELS: dict[str, Callable[[], object]] = {
    "global-mean": GlobalMean,
    "item-mean": lambda: ItemMean(ItemMeanConfig(damping=5.0)),
    "popularity": MostPopular,
    "bias": lambda: UserItemBias(UserItemBiasConfig(reg=5.0, item_bias_from_attributes=True)),
    "mf": lambda: MatrixFactorization(MatrixFactorizationConfig(factors=10, reg=10.0, iterations=5)),
    "content": ContentBased,
}


@pytest.fixture(scope="module")
def split(data_dir) -> ColdStartSplit:
    from metarec.data.loaders.registry import load_dataset
    from metarec.meta.run import RunConfig

    run = RunConfig.from_toml("configs/ml100k.toml")
    return make_split(load_dataset("ml-100k", data_dir=str(data_dir)), replace(run.split, seed=0))


@pytest.fixture(scope="module")
def fitted(split: ColdStartSplit) -> dict[str, object]:
    return {name: make().fit(split) for name, make in MODELS.items()}


def assert_batched_equals_per_task(method: BaselineMethod, tasks: TaskSet, catalogue: np.ndarray) -> None:
    """Every task's batched scores against ``score_items`` on the candidates the ranking would give it."""
    score = method.scorer("v", tasks, catalogue)
    model = method.model
    for t in range(len(tasks)):
        cand = catalogue[~np.isin(catalogue, tasks.support_of(t)[0])]
        want = model.score_items(tasks.support_of(t), cand, user_idx=int(tasks.user_idx[t]))
        got = score(t, cand)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{tasks.name} task {t}")


def catalogues(split: ColdStartSplit, scenario: str) -> list[np.ndarray]:
    """The whole catalogue, and for a new-item scenario the new items (what the benchmark ranks there)."""
    out = [np.arange(split.dataset.n_items)]
    if scenario.endswith("new_items"):
        out.append(np.flatnonzero(split.new_item_mask))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_catalogue_scores_equal_per_task_scores(name, split, fitted):
    method = BaselineMethod(name, [MODELS[name]])
    method.model = fitted[name]
    assert hasattr(method.model, "score_catalogue")
    warm = split.test["warm"]
    assert method.model._known_user(warm.user_idx).all()  # the trained-user prior is exercised
    for scenario, tasks in split.test.items():
        for catalogue in catalogues(split, scenario):
            assert_batched_equals_per_task(method, tasks, catalogue)


@pytest.mark.parametrize("name", [n for n in MODELS if hasattr(MODELS[n](), "with_new_items")])
def test_batched_scores_equal_per_task_scores_with_pooled_new_items(name, split, fitted):
    method = BaselineMethod(name, [MODELS[name]])
    method.model, method.pool_scale = fitted[name], 2.0
    for scenario in ("new_items", "new_users_new_items"):
        tasks = split.test[scenario]
        with method.pooled("v", tasks):
            assert method.model is not fitted[name]  # the pooled copy is what both paths score
            for catalogue in catalogues(split, scenario):
                assert_batched_equals_per_task(method, tasks, catalogue)


@pytest.mark.parametrize("name", list(MODELS))
def test_blocks_of_tasks_give_the_same_scores(name, split, fitted, monkeypatch):
    """Past MAX_SCORE_CELLS the matrix is scored a block of tasks at a time (here 7 tasks)."""
    tasks, catalogue = split.test["new_users"], np.arange(split.dataset.n_items)
    monkeypatch.setattr(methods, "MAX_SCORE_CELLS", 7 * len(catalogue))
    calls = []
    model = fitted[name]

    class Counting:
        def score_catalogue(self, block: TaskSet, cat: np.ndarray) -> np.ndarray:
            calls.append(len(block))
            return model.score_catalogue(block, cat)

        def score_items(self, *args, **kwargs) -> np.ndarray:
            return model.score_items(*args, **kwargs)

    method = BaselineMethod(name, [MODELS[name]])
    method.model = Counting()
    assert_batched_equals_per_task(method, tasks, catalogue)
    assert sum(calls) == len(tasks) and max(calls) == 7  # each block once, in task order


def test_a_model_without_the_batched_method_is_scored_per_task(split, fitted):
    model = fitted["bias"]

    class PerTaskOnly:
        def score_items(self, *args, **kwargs) -> np.ndarray:
            return model.score_items(*args, **kwargs)

    method = BaselineMethod("bias", [MODELS["bias"]])
    method.model = PerTaskOnly()
    assert_batched_equals_per_task(method, split.test["new_users"], np.arange(split.dataset.n_items))
