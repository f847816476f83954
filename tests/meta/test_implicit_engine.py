"""Implicit feedback in the engine: each loss against a hand-computed value, the implicit fold-in against a
dense solve over the whole catalogue, and the vectorised meta-gradient against the per-task loop."""

from __future__ import annotations

import math

import pytest
import torch

from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from metarec.meta.losses import masked_loss
from metarec.meta.reference import reference_meta_gradients
from metarec.models import ModelConfig, build_model
from metarec.models.base import Context
from metarec.tasks.taskset import TaskBatch

SCORES = torch.tensor([[2.0, 0.5, -1.0, 3.0, 9.0]])
TARGET = torch.tensor([[1.0, 0.0, 0.0, 2.0, 1.0]])  # > 0: a positive (its confidence), 0: a negative
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the last entry is padding


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bce_by_hand():
    expected = (-math.log(sig(2.0)) - math.log(1 - sig(0.5)) - math.log(1 - sig(-1.0)) - math.log(sig(3.0))) / 4
    assert float(masked_loss(SCORES, TARGET, MASK, "bce")[0]) == pytest.approx(expected, rel=1e-6)


def test_bpr_by_hand():
    pairs = [(2.0, 0.5), (2.0, -1.0), (3.0, 0.5), (3.0, -1.0)]
    expected = sum(-math.log(sig(p - n)) for p, n in pairs) / 4
    assert float(masked_loss(SCORES, TARGET, MASK, "bpr")[0]) == pytest.approx(expected, rel=1e-6)


def test_sampled_softmax_by_hand():
    neg = math.exp(0.5) + math.exp(-1.0)
    expected = (-math.log(math.exp(2.0) / (math.exp(2.0) + neg)) - math.log(math.exp(3.0) / (math.exp(3.0) + neg))) / 2
    assert float(masked_loss(SCORES, TARGET, MASK, "softmax")[0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["bpr", "softmax"])
def test_a_set_without_negatives_costs_nothing(kind):
    assert float(masked_loss(SCORES, TARGET, torch.tensor([[1.0, 0, 0, 1.0, 0]]), kind)[0]) == 0.0


def implicit_learner(tiny_split, kind: str = "neural-cf", fold_in: bool = True, support_map: bool = False, **meta):
    split, feats = tiny_split
    model = build_model(ModelConfig(kind=kind, embedding_size=8, hidden=(16, 16), factors=8, fold_in=fold_in,
                                    item_id_embedding=True, implicit=True, support_map=support_map),
                        feats.user_encoder, feats.item_encoder, feats.item_features, known_items=feats.known_items,
                        rating_scale=(0.0, 1.0), seed=3).to(torch.float64)
    rate = {"inner_lr": 0.1} if meta.get("inner_steps", 1) else {}
    learner = MetaLearner(model, MetaConfig(**{**rate, "l2": 1e-3, **meta}), feats.user_features)
    batch = split.meta_train.packed().select(torch.arange(6))

    def implicit(t):  # ratings >= 4 are positives (confidence 1 or 2), the rest sampled negatives (0)
        return torch.where(t >= 4, t - 3, torch.zeros_like(t)).to(torch.float64)
    fields = vars(batch)
    batch = TaskBatch(**{k: (implicit(v) if k.endswith("_rating") else v.to(torch.float64) if v is not None
                             and v.is_floating_point() else v) for k, v in fields.items()})
    assert (batch.query_rating * batch.query_mask > 0).any() and ((batch.query_rating == 0) & (batch.query_mask > 0)).any()
    return learner, batch


def test_implicit_fold_in_is_the_weighted_ridge_over_the_whole_catalogue(tiny_split):
    learner, batch = implicit_learner(tiny_split, inner_steps=0)
    model = learner.model.eval()
    n = model.n_items
    with torch.no_grad():
        all_vec = model.embed_items(torch.arange(n))
        user = model.embed_users(*[dict(d) for d in (learner.user_features.select(batch.user_idx[:1]).single,
                                                     learner.user_features.select(batch.user_idx[:1]).multi)])[0]
        s_item, s_rating, s_mask = batch.support_item[0], batch.support_rating[0], batch.support_mask[0]
        context = Context(all_vec[s_item], s_rating, s_mask)
        scores = model.score(user, all_vec, context)
        # dense: every item's target and weight written out
        p, b_u = model._user_prior(user)
        prior = model._prior(p, b_u, all_vec)
        a = torch.exp(model.head["log_confidence"].weight[0, 0])
        y, w = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        pos = (s_mask > 0) & (s_rating > 0)
        y[s_item[pos]] = 1.0
        w[s_item[pos]] = 1.0 + a * s_rating[pos]
        z = model._design(all_vec)
        lam = model.penalty(pos.double())
        g = torch.exp(model.head["log_fold_scale"].weight[0, 0])
        delta = torch.linalg.solve(z.t() @ (w.unsqueeze(1) * z) + torch.diag(lam), z.t() @ (w * y))
        expected = prior + g * (z @ delta)
    assert pos.sum() > 0
    torch.testing.assert_close(scores, expected, rtol=1e-9, atol=1e-9)
    assert float(scores[s_item[pos]].mean()) > float(scores.mean())  # the positives are pulled up


@pytest.mark.parametrize("kind,fold_in,steps,inner_loss,support_map,query_loss", [
    # the recipe's model under every outer loss, then each engine path under one loss each
    ("neural-cf", True, 0, "squared", True, "bce"), ("neural-cf", True, 0, "squared", True, "bpr"),
    ("neural-cf", True, 0, "squared", True, "softmax"), ("neural-cf", True, 1, "bce", False, "softmax"),
    ("neural-cf", False, 3, "bce", False, "bpr"), ("feature-mlp", False, 1, "squared", False, "bce"),
    ("feature-mlp", False, 3, "bpr", False, "softmax"), ("attention", False, 1, "softmax", False, "bpr"),
])
def test_implicit_meta_gradient_equals_per_task_loop(tiny_split, kind, fold_in, steps, inner_loss, support_map, query_loss):
    learner, batch = implicit_learner(tiny_split, kind, fold_in, support_map, inner_steps=steps, query_loss=query_loss,
                                      inner_loss=inner_loss)
    if support_map:  # away from its zero start, so its own gradient and what it passes on are both checked
        torch.nn.init.normal_(learner.model.head["support_map"].weight, std=0.1)
    assert learner.kernel == "vmap"
    fast, fast_loss = learner.meta_gradients(batch)
    slow, slow_loss = reference_meta_gradients(learner, batch)
    scale = max(float(v.abs().max()) for v in slow.values())
    assert scale > 0
    assert max(float((fast[k] - slow[k]).abs().max()) for k in fast) / scale <= 1e-6
    assert fast_loss == pytest.approx(slow_loss, rel=1e-6)


def test_implicit_scores_are_not_clamped(tiny_split):
    learner, batch = implicit_learner(tiny_split, fold_in=False, inner_steps=0)
    with torch.no_grad():
        learner.model.head["bias"].weight.fill_(5.0)  # every score far above the (0, 1) "scale"
    pred = learner.predict_query(batch)
    assert float(pred.max()) > 1.0 and len(torch.unique(pred)) > 1


def test_a_frozen_catalogue_is_computed_once_and_changes_nothing(tiny_split):
    """Serving freezes the catalogue's Gram statistics once (Personalizer); training never reads stale ones."""
    learner, batch = implicit_learner(tiny_split, inner_steps=0)
    model = learner.model.eval()
    calls = []
    original = model.catalogue_stats
    model.catalogue_stats = lambda vec: calls.append(1) or original(vec)
    fresh = learner.predict_query(batch)
    learner.freeze_catalogue(learner.catalogue_vectors(torch.arange(model.n_items)))
    calls.clear()
    frozen = [learner.predict_query(batch) for _ in range(3)]
    assert not calls and all(torch.allclose(f, fresh, rtol=0, atol=1e-12) for f in frozen)
    learner.freeze_catalogue(None)
    learner.meta_step(batch)  # the parameters move (fused Adam leaves their version counters alone)
    before = len(calls)
    moved = learner.predict_query(batch)
    assert len(calls) == before + 1 and not torch.allclose(moved, fresh)

