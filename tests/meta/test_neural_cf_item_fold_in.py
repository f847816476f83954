"""NeuralCF's item-side fold-in (metarec.meta.item_fold_in): the closed form, what it leaves alone, and
that a task's query ratings never enter it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from metarec.meta.item_fold_in import (fold_in_items, item_prior_variance, new_items_folded_in,
                                       supports_item_fold_in, task_user_weights)
from metarec.models import ModelConfig, build_model
from metarec.tasks.taskset import TaskSet, new_item_rows


@pytest.fixture(scope="module")
def tiny_split(tiny_split_new_items):
    return tiny_split_new_items


def learner_for(tiny_split, **overrides) -> MetaLearner:
    split, feats = tiny_split
    config = ModelConfig(**{"kind": "neural-cf", "embedding_size": 8, "hidden": (16,), "factors": 4,
                            "item_id_embedding": True, "fold_in": True, **overrides})
    model = build_model(config, feats.user_encoder, feats.item_encoder, feats.item_features,
                        known_items=feats.known_items, seed=1)
    with torch.no_grad():
        model.item_id.weight.normal_(0, 0.3)  # warm items' ids matter, as after training
        model.head["log_reg"].weight.normal_()
    return MetaLearner(model, MetaConfig(inner_steps=0), feats.user_features)


def known_items(tiny_split) -> np.ndarray:
    return tiny_split[1].known_items.numpy()


def test_one_round_is_the_ridge_solution_on_the_raters_weights(tiny_split):
    split, _ = tiny_split
    learner = learner_for(tiny_split)
    tasks = split.test["new_items"]
    known = known_items(tiny_split)
    penalty = np.linspace(0.5, 3.0, learner.model.factors + 1)
    offsets = fold_in_items(learner, tasks, known, penalty, rounds=1).double().numpy()
    assert learner.model.item_offset is None  # nothing left installed
    w, c = task_user_weights(learner, tasks)
    task, item, rating = new_item_rows(tasks, known)
    with torch.no_grad():
        base = learner.catalogue_vectors(torch.arange(len(known))).double().numpy()
    f = learner.model.factors
    for v in np.unique(item):
        at = item == v
        z = np.c_[w[task[at]], np.ones(at.sum())]
        y = rating[at] - z[:, :f] @ base[v, :f] - base[v, f] - c[task[at]]
        want = np.linalg.solve(z.T @ z + np.diag(penalty), z.T @ y)
        np.testing.assert_allclose(offsets[v], want, rtol=1e-4, atol=1e-5)
    untouched = np.ones(len(known), bool)
    untouched[np.unique(item)] = False
    assert np.abs(offsets[untouched]).max() == 0.0  # warm items and unrated new items keep their vectors
    assert np.abs(offsets[np.unique(item)]).max() > 1e-3


def test_offsets_apply_inside_the_block_only_and_ignore_query_ratings(tiny_split):
    split, _ = tiny_split
    learner = learner_for(tiny_split)
    tasks = split.test["new_items"]
    known = known_items(tiny_split)
    penalty = np.ones(learner.model.factors + 1)
    before = learner.predict_tasks(tasks)
    with new_items_folded_in(learner, tasks, known, penalty):
        inside = learner.predict_tasks(tasks)
    np.testing.assert_array_equal(learner.predict_tasks(tasks), before)
    assert np.abs(inside - before).max() > 1e-3
    noise = np.random.default_rng(0).uniform(1, 5, len(tasks.query_rating)).astype(np.float32)
    other = TaskSet(tasks.name, tasks.user_idx, tasks.support_ptr, tasks.support_item, tasks.support_rating,
                    tasks.query_ptr, tasks.query_item, noise)
    with new_items_folded_in(learner, other, known, penalty):
        np.testing.assert_allclose(learner.predict_tasks(tasks), inside, rtol=1e-6, atol=1e-6)


def test_prior_variance_measures_what_ids_add(tiny_split):
    learner = learner_for(tiny_split)
    assert supports_item_fold_in(learner)
    s2 = item_prior_variance(learner)
    assert s2.shape == (learner.model.factors + 1,) and (s2 > 1e-4).all()
    with torch.no_grad():
        learner.model.item_id.weight.zero_()  # ids that add nothing: only the floor is left
    np.testing.assert_allclose(item_prior_variance(learner), 1e-4)
    assert bool(learner.model.item_known.any())  # the known-item mask is restored


def test_no_item_fold_in_when_item_vectors_adapt_per_user(tiny_split):
    """Reptile adapts every parameter, the item tower included: there is no shared item vector to offset."""
    _, feats = tiny_split
    model = learner_for(tiny_split).model
    everything = MetaLearner(model, MetaConfig(algorithm="reptile", adapt="all", inner_steps=1), feats.user_features)
    assert not supports_item_fold_in(everything)


def test_without_item_ids_the_prior_is_the_spread_of_attribute_vectors(tiny_split):
    split, feats = tiny_split
    config = ModelConfig(kind="neural-cf", embedding_size=8, hidden=(16,), factors=4, item_id_embedding=False,
                         fold_in=True)
    model = build_model(config, feats.user_encoder, feats.item_encoder, feats.item_features,
                        known_items=feats.known_items, seed=1)
    learner = MetaLearner(model, MetaConfig(inner_steps=0), feats.user_features)
    n_items = len(feats.known_items)
    with torch.no_grad():
        vectors = learner.catalogue_vectors(torch.arange(n_items)).double().numpy()
    np.testing.assert_allclose(item_prior_variance(learner), np.maximum(vectors.var(0, ddof=1), 1e-4), rtol=1e-5)
    tasks = split.test["new_items"]
    offsets = fold_in_items(learner, tasks, known_items(tiny_split), np.ones(5))
    assert offsets.shape == (n_items, 5) and bool(torch.isfinite(offsets).all())
