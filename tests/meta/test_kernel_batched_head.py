"""The batched-head kernel (metarec.meta.kernels.batched_head: every task's inner loop as batched products)
equals maml.py (the vmap kernel) for FeatureMLP heads: meta-gradients, adapted heads and predictions."""

from __future__ import annotations

import pytest
import torch

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from test_equivalence import make_learner, relative_difference


def _pair(tiny_split, **meta) -> tuple[MetaLearner, MetaLearner, object]:
    """(batched-head learner, vmap learner on the same model, batch)."""
    fast, batch = make_learner(tiny_split, "feature-mlp", kernel="batched_head", **meta)
    plain = MetaLearner(fast.model, MetaConfig(**{**vars(fast.config), "kernel": "vmap"}), fast.user_features)
    if fast.inner_lrs:  # Meta-SGD: the same learned rates, not merely equal starting values
        plain.inner_lrs = fast.inner_lrs
    return fast, plain, batch


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "reptile"])
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradients_equal_maml(tiny_split, algorithm, steps):
    fast, plain, batch = _pair(tiny_split, algorithm=algorithm, inner_steps=steps, inner_lr=0.3)
    if fast.inner_lrs:  # rates that differ per entry, so a mix-up of names or halves shows
        with torch.no_grad():
            for p in fast.inner_lrs.values():
                p.mul_(torch.rand(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype) + 0.5)
    a, loss_a = fast.meta_gradients(batch)
    b, loss_b = plain.meta_gradients(batch)
    assert relative_difference(a, b) <= 1e-5
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert any(float(a[n].abs().max()) > 0 for n in fast.adapted)


def test_support_minibatches_equal_maml(tiny_split):
    fast, plain, batch = _pair(tiny_split, algorithm="maml", inner_steps=3, support_batch_size=3)
    a, _ = fast.meta_gradients(batch, generator=torch.Generator().manual_seed(4))
    b, _ = plain.meta_gradients(batch, generator=torch.Generator().manual_seed(4))
    assert relative_difference(a, b) <= 1e-5


@pytest.mark.parametrize("algorithm,steps", [("maml", 1), ("maml", 4), ("metasgd", 2)])
def test_adapt_and_predictions_equal_maml(tiny_split, algorithm, steps):
    fast, plain, batch = _pair(tiny_split, algorithm=algorithm, inner_steps=steps, inner_lr=0.3)
    adapted_a, task_a = fast.adapt(batch)
    adapted_b, task_b = plain.adapt(batch)
    assert relative_difference(adapted_a, adapted_b) <= 1e-6
    query_a, query_b = fast.predict_query(batch), plain.predict_query(batch)
    assert torch.allclose(query_a, query_b, atol=1e-8)
    items = torch.arange(fast.model.n_items)
    vec = fast.catalogue_vectors(items)
    whole_a = fast.predict_items(adapted_a, task_a, items, vec, fast.catalogue_projection(vec), fast.catalogue_gram(vec))
    whole_b = plain.predict_items(adapted_b, task_b, items, vec)
    assert whole_a.shape == (len(batch), fast.model.n_items)
    assert torch.allclose(whole_a, whole_b, atol=1e-8)
    some = items[::3]  # a subset of the catalogue, looked up in the Gram matrix
    part = fast.predict_items(adapted_a, task_a, some, vec[some], None, fast.catalogue_gram(vec))
    assert torch.allclose(part, whole_b[:, ::3], atol=1e-8)


def test_batched_head_refused_where_it_is_not_exact(tiny_split):
    with pytest.raises(ConfigError, match="batched_head.*FeatureMLP"):
        make_learner(tiny_split, "neural-cf", kernel="batched_head")
    with pytest.raises(ConfigError, match="batched_head.*outside the MLP head"):
        make_learner(tiny_split, "feature-mlp", kernel="batched_head", adapt="all")


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_one_step_adaptation_equals_the_general_loop(tiny_split, algorithm):
    """adapt's hand-written K=1 path (adapt_one_step) gives the general loop's adapted head: layers, explicit
    parameters and predictions (float64, padded support rows, a catalogue projection given or not)."""
    from metarec.meta.kernels import batched_head, served

    fast, batch = make_learner(tiny_split, "feature-mlp", kernel="batched_head", algorithm=algorithm, inner_lr=0.3)
    model, params = fast.model, {n: p.detach() for n, p in fast._params.items()}
    head = {n: params[n] for n in fast.adapted}
    with torch.no_grad():
        task = fast.task_inputs(batch)
        proj = batched_head.project_items(model, params, task["item_vec"])
        for support_proj in (None, proj.index_select(0, task["support_inv"].reshape(-1)).view(*task["support_inv"].shape, -1)):
            one = served.adapt_one_step(model, head, task["user_vec"], task["support_vec"], task["support_rating"],
                                              task["support_mask"], 0.3, support_proj)
            loop = batched_head.adapted_heads(model, head, task, 1, 0.3, True)
            n = len(batch)
            assert relative_difference(batched_head.head_params(model, one, n),
                                       batched_head.head_params(model, loop, n)) <= 1e-12
            for vec in (task["query_vec"], task["item_vec"]):
                assert torch.allclose(batched_head.predict_head(model, one, vec), batched_head.predict_head(model, loop, vec),
                                      atol=1e-12)


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_one_user_catalogue_scores_equal_the_batched_ones(tiny_split, steps):
    """predict_items of one adapted user against the whole catalogue (a served request: plain 2-d products)
    equals the batched form and the vmap kernel, user by user, after 0, 1 or several steps."""
    fast, plain, batch = _pair(tiny_split, algorithm="maml", inner_steps=max(steps, 1), inner_lr=0.3)
    items = torch.arange(fast.model.n_items)
    vec = fast.catalogue_vectors(items)
    proj, gram = fast.catalogue_projection(vec), fast.catalogue_gram(vec)
    adapted_all, task_all = fast.adapt(batch, steps)
    batched = fast.predict_items(adapted_all, task_all, items, vec, proj, gram)
    adapted_b, task_b = plain.adapt(batch, steps)
    reference = plain.predict_items(adapted_b, task_b, items, vec)
    for i in range(len(batch)):
        one = batch.select([i])
        adapted, task = fast.adapt(one, steps, item_table=(vec, proj))
        scores = fast.predict_items(adapted, task, items, vec, proj, gram)
        assert scores.shape == (1, fast.model.n_items)
        assert torch.allclose(scores[0], batched[i], atol=1e-10)
        assert torch.allclose(scores[0], reference[i], atol=1e-10)
