"""The learner's meta-gradient (whichever kernel it chooses) equals the plain per-task loop's
(metarec.meta.reference), for every model and algorithm."""

from __future__ import annotations

import pytest
import torch

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from metarec.meta.reference import reference_meta_gradients
from metarec.models import ModelConfig, build_model
from metarec.tasks.taskset import TaskBatch

MODELS = ["feature-mlp", "neural-cf", "attention"]
ALGORITHMS = ["maml", "fomaml", "reptile", "metasgd"]


def make_learner(tiny_split, kind: str, dtype=torch.float64, **meta) -> tuple[MetaLearner, TaskBatch]:
    split, feats = tiny_split
    model = build_model(ModelConfig(kind=kind, embedding_size=8, hidden=(16, 16), factors=8, attention_size=8,
                                    item_id_embedding=True),
                        feats.user_encoder, feats.item_encoder, feats.item_features, known_items=feats.known_items,
                        rating_scale=(1.0, 5.0), seed=3).to(dtype)
    rate = {"inner_lr": 0.1} if meta.get("inner_steps", 1) else {}  # no inner step: no inner rate to set
    learner = MetaLearner(model, MetaConfig(**{**rate, "l2": 1e-3, **meta}), feats.user_features)
    batch = split.meta_train.packed().select(torch.arange(6))  # unequal support sizes: padding matters
    batch = TaskBatch(*(t.to(dtype) if t is not None and t.is_floating_point() else t for t in vars(batch).values()))
    assert len(set(batch.support_mask.sum(1).tolist())) > 1
    return learner, batch


def relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    scale = max(float(v.abs().max()) for v in b.values())
    assert scale > 0
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("adapt", ["head", "all"])
def test_vectorised_equals_per_task_loop(tiny_split, kind, algorithm, steps, adapt):
    learner, batch = make_learner(tiny_split, kind, algorithm=algorithm, inner_steps=steps, adapt=adapt)
    fast, fast_loss = learner.meta_gradients(batch)
    slow, slow_loss = reference_meta_gradients(learner, batch)
    assert relative_difference(fast, slow) <= 1e-5
    assert fast_loss == pytest.approx(slow_loss, rel=1e-6)
    # the gradient is not trivially zero where it should flow
    assert any(float(v.abs().max()) > 0 for k, v in fast.items() if k in learner.adapted)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("query_loss", ["absolute", "huber"])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_query_losses_match_the_per_task_loop(tiny_split, kind, query_loss, steps):
    """The outer loss on the query set (MetaConfig.query_loss), through every engine path."""
    learner, batch = make_learner(tiny_split, kind, algorithm="maml", inner_steps=steps, query_loss=query_loss)
    fast, fast_loss = learner.meta_gradients(batch)
    slow, slow_loss = reference_meta_gradients(learner, batch)
    assert relative_difference(fast, slow) <= 1e-5
    assert fast_loss == pytest.approx(slow_loss, rel=1e-6)
    squared, _ = make_learner(tiny_split, kind, algorithm="maml", inner_steps=steps)[0].meta_gradients(batch)
    assert relative_difference(fast, squared) > 1e-3  # the loss is really a different one


def test_reptile_has_no_query_loss_to_choose():
    with pytest.raises(ConfigError, match="reptile has no query loss"):
        MetaConfig(algorithm="reptile", query_loss="absolute")


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_support_minibatches_match_reference(tiny_split, algorithm):
    learner, batch = make_learner(tiny_split, "feature-mlp", algorithm=algorithm, inner_steps=3, support_batch_size=4)
    width = batch.support_mask if algorithm != "reptile" else torch.cat([batch.support_mask, batch.query_mask], 1)
    masks = learner.step_masks(width, 3, torch.Generator().manual_seed(5))
    assert (masks.sum(-1) <= 4).all() and (masks.sum(-1) > 0).all()
    fast, _ = learner.meta_gradients(batch, generator=torch.Generator().manual_seed(5))
    slow, _ = reference_meta_gradients(learner, batch, masks)
    assert relative_difference(fast, slow) <= 1e-5


def test_float32_engine_matches_reference(tiny_split):
    learner, batch = make_learner(tiny_split, "attention", dtype=torch.float32, algorithm="maml", inner_steps=5)
    fast, _ = learner.meta_gradients(batch)
    slow, _ = reference_meta_gradients(learner, batch)
    assert relative_difference(fast, slow) <= 1e-5


@pytest.mark.parametrize("kind", MODELS)
def test_second_order_differs_from_first_order(tiny_split, kind):
    """The Hessian term is real: MAML and first-order MAML give different meta-gradients..."""
    second, _ = make_learner(tiny_split, kind, algorithm="maml", inner_steps=2, inner_lr=0.5)[0].meta_gradients(
        make_learner(tiny_split, kind)[1])
    first, _ = make_learner(tiny_split, kind, algorithm="fomaml", inner_steps=2, inner_lr=0.5)[0].meta_gradients(
        make_learner(tiny_split, kind)[1])
    assert relative_difference(second, first) > 1e-3


def test_orders_agree_without_inner_steps(tiny_split):
    """...and the same one when there is no inner loop to differentiate through."""
    learner2, batch = make_learner(tiny_split, "feature-mlp", algorithm="maml", inner_steps=0)
    learner1, _ = make_learner(tiny_split, "feature-mlp", algorithm="fomaml", inner_steps=0)
    assert relative_difference(learner2.meta_gradients(batch)[0], learner1.meta_gradients(batch)[0]) < 1e-12


def test_metasgd_learns_inner_rates(tiny_split):
    learner, batch = make_learner(tiny_split, "feature-mlp", algorithm="metasgd", inner_steps=1)
    grads, _ = learner.meta_gradients(batch)
    rate_grads = [v for k, v in grads.items() if k.startswith("inner_lr.")]
    assert rate_grads and any(float(v.abs().max()) > 0 for v in rate_grads)
    before = {n: p.detach().clone() for n, p in learner.inner_lrs.items()}
    learner.meta_step(batch)
    assert any(not torch.equal(before[n], p) for n, p in learner.inner_lrs.items())


def test_meta_step_never_mutates_weights_inside_the_inner_loop(tiny_split):
    learner, batch = make_learner(tiny_split, "feature-mlp", algorithm="maml", inner_steps=3)
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    learner.adapt(batch)
    learner.meta_gradients(batch)
    assert all(torch.equal(before[n], p) for n, p in learner.model.named_parameters())
