"""The closed-form fold-in head of NeuralCF and item-id dropout: known answers, and engine == loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig
from metarec.meta.inputs import predict_task_items
from metarec.meta.learner import MetaLearner
from metarec.meta.reference import reference_meta_gradients
from metarec.models import Context, ModelConfig, build_model
from metarec.tasks.taskset import TaskBatch


def fold_in_model(tiny_split, **overrides):
    _, feats = tiny_split
    config = ModelConfig(**{"kind": "neural-cf", "embedding_size": 8, "hidden": (16,), "factors": 4,
                            "item_id_embedding": True, "fold_in": True, **overrides})
    return build_model(config, feats.user_encoder, feats.item_encoder, feats.item_features,
                       known_items=feats.known_items, seed=1).double()


def ridge(z: np.ndarray, y: np.ndarray, reg: np.ndarray) -> np.ndarray:
    return np.linalg.solve(z.T @ z + np.diag(reg), z.T @ y)


def test_fold_in_solves_the_ridge_problem(tiny_split):
    model = fold_in_model(tiny_split).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.head["log_reg"].weight.normal_()
    user = torch.randn(model.user_dim, dtype=torch.float64)
    support = model.embed_items(torch.arange(7))
    query = model.embed_items(torch.arange(7, 12))
    rating = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 5.0, 4.0], dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0], dtype=torch.float64)  # two padding rows must not count
    with torch.no_grad():
        pred = model.score(user, query, Context(support, rating, mask)).numpy()
        prior_q = model.score(user, query).numpy()
        prior_s = model.score(user, support).numpy()
    f = model.factors
    z_s = np.c_[support[:5, :f].detach().numpy(), np.ones(5)]
    z_q = np.c_[query[:, :f].detach().numpy(), np.ones(5)]
    reg = np.exp(model.head["log_reg"].weight[0].detach().numpy())
    delta = ridge(z_s, rating.numpy()[:5] - prior_s[:5], reg)
    np.testing.assert_allclose(pred, prior_q + z_q @ delta, rtol=1e-9, atol=1e-9)
    assert np.abs(delta).max() > 1e-3  # the support moved the prediction


def test_support_scores_are_leave_one_out(tiny_split):
    model = fold_in_model(tiny_split).eval()
    user = torch.randn(model.user_dim, dtype=torch.float64)
    support = model.embed_items(torch.arange(6)).detach()
    rating = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    mask = torch.ones(6, dtype=torch.float64)
    with torch.no_grad():
        loo = model.score(user, support, Context(support, rating, mask), exclude_self=True)
        for i in range(6):
            keep = torch.arange(6) != i
            refit = model.score(user, support[i:i + 1], Context(support[keep], rating[keep], mask[keep]))
            assert float(loo[i]) == pytest.approx(float(refit[0]), abs=1e-9)


def test_no_support_gives_the_attribute_prior(tiny_split):
    model = fold_in_model(tiny_split).eval()
    user = torch.randn(model.user_dim, dtype=torch.float64)
    items = model.embed_items(torch.arange(5))
    empty = Context(items[:0], torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    masked = Context(items, torch.full((5,), 5.0, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    with torch.no_grad():
        prior = model.score(user, items)
        torch.testing.assert_close(model.score(user, items, empty), prior)
        torch.testing.assert_close(model.score(user, items, masked), prior)


@pytest.mark.parametrize("algorithm,steps,residual", [("maml", 0, False), ("maml", 2, False), ("fomaml", 1, False),
                                                      ("metasgd", 1, False), ("maml", 0, True), ("maml", 2, True)])
def test_engine_equals_per_task_loop_with_fold_in(tiny_split, algorithm, steps, residual):
    split, feats = tiny_split
    model = fold_in_model(tiny_split, item_id_residual=residual)
    if residual:  # the id vectors start at zero; make them matter
        with torch.no_grad():
            model.item_id.weight.normal_(std=0.3)
    learner = MetaLearner(model, MetaConfig(algorithm=algorithm, inner_steps=steps, l2=1e-3, **({"inner_lr": 0.1} if steps else {})),
                          feats.user_features)
    batch = split.meta_train.packed().select(torch.arange(6))
    batch = TaskBatch(*(t.double() if t is not None and t.is_floating_point() else t for t in vars(batch).values()))
    fast, fast_loss = learner.meta_gradients(batch)
    slow, slow_loss = reference_meta_gradients(learner, batch)
    scale = max(float(v.abs().max()) for v in slow.values())
    assert max(float((fast[k] - slow[k]).abs().max()) for k in slow) <= 1e-5 * scale
    assert fast_loss == pytest.approx(slow_loss, rel=1e-6)
    assert float(fast["head.log_reg.weight"].abs().max()) > 0  # the ridge penalty is meta-learned


def test_item_id_dropout_only_in_training_and_never_for_new_items(tiny_split):
    model = fold_in_model(tiny_split, item_id_dropout=0.5)
    with torch.no_grad():
        model.item_id.weight.fill_(1.0)
    items = torch.arange(model.item_known.numel()).repeat(20)
    from metarec.models.base import RatingModel
    model.train()
    with torch.no_grad():
        train_ids = RatingModel.embed_items(model, items)[:, -model.item_id.embedding_dim:]
        model.eval()
        eval_ids = RatingModel.embed_items(model, items)[:, -model.item_id.embedding_dim:]
    known = model.item_known[items] > 0
    kept = (train_ids[known].abs().sum(-1) > 0).double().mean()
    assert 0.4 < float(kept) < 0.6
    assert bool((eval_ids[known].abs().sum(-1) > 0).all())
    assert float(train_ids[~known].abs().sum()) == 0.0 and float(eval_ids[~known].abs().sum()) == 0.0


def test_residual_item_ids_are_added_to_what_the_attributes_predict(tiny_split):
    """item_id_residual: a warm item's vector is the tower's attribute-only output plus its id vector; a
    new item's is the attribute-only output; the tower never sees the ids."""
    model = fold_in_model(tiny_split, item_id_residual=True).eval()
    assert model.item_id.embedding_dim == model.factors + 1
    assert model.item_tower[0].in_features == model.item_embedding.out_dim
    with torch.no_grad():
        model.item_id.weight.normal_()
        items = torch.arange(model.item_known.numel())
        vectors = model.embed_items(items)
        attributes_only = model.item_tower(model.item_attribute_vectors(items))
    known = model.item_known > 0
    assert bool(known.any()) and bool((~known).any())
    torch.testing.assert_close(vectors[~known], attributes_only[~known])
    torch.testing.assert_close(vectors[known], attributes_only[known] + model.item_id.weight[known])
    assert float((vectors[known] - attributes_only[known]).abs().min()) > 0


def test_residual_item_ids_start_at_the_attribute_prediction(tiny_split):
    model = fold_in_model(tiny_split, item_id_residual=True).eval()
    assert float(model.item_id.weight.detach().abs().max()) == 0.0


def test_fold_in_config_is_checked():
    with pytest.raises(ConfigError, match="item_id_residual"):
        ModelConfig(kind="feature-mlp", item_id_embedding=True, item_id_residual=True)
    with pytest.raises(ConfigError, match="item_id_residual"):
        ModelConfig(kind="neural-cf", item_id_embedding=False, item_id_residual=True)
    with pytest.raises(ConfigError, match="fold_in"):
        ModelConfig(kind="feature-mlp", fold_in=True)
    with pytest.raises(ConfigError, match="item_id_dropout"):
        ModelConfig(item_id_dropout=1.0)


@pytest.mark.parametrize("tasks", [5, 1])
@pytest.mark.parametrize("fold_in,steps", [(True, 0), (True, 2), (False, 0), (False, 1)])
def test_catalogue_scores_by_user_weights_equal_scoring_each_item(tiny_split, fold_in, steps, tasks):
    """NeuralCF is linear in the item vector: scoring a catalogue through (w, c) per user - batched
    directly when nothing adapted, vmapped otherwise - equals the model's score of every item. One task
    (a served request) as five: adapt(steps=0)'s views are the parameters under a stride-0 axis."""
    from torch.func import vmap

    split, feats = tiny_split
    model = fold_in_model(tiny_split, fold_in=fold_in)
    with torch.no_grad():
        if fold_in:
            model.head["log_reg"].weight.normal_()
    learner = MetaLearner(model, MetaConfig(inner_steps=steps, **({"inner_lr": 0.1} if steps else {})), feats.user_features)
    batch = split.validation["new_users"].packed().select(torch.arange(tasks))
    batch = TaskBatch(*(t.double() if t is not None and t.is_floating_point() else t for t in vars(batch).values()))
    items = torch.arange(feats.item_features.single[next(iter(feats.item_features.single))].shape[0])
    item_vec = learner.catalogue_vectors(items)
    adapted, task = learner.adapt(batch)
    assert all(v.stride(0) == 0 for v in adapted.values()) == (steps == 0)  # one task too: a stride-0 axis
    assert learner._unadapted(adapted) == (steps == 0)  # the batched call, no vmap
    # equal across tasks is not unadapted: a copy of the parameters under a stride-0 axis takes vmap
    copies = {n: v[0].clone().expand(tasks, *v.shape[1:]) for n, v in adapted.items()}
    assert not learner._unadapted(copies)
    fast = learner.predict_items(adapted, task, items, item_vec)
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in adapted}
    with torch.no_grad():
        each = vmap(lambda a, fr, t: predict_task_items(model, {**fr, **a}, t, items, item_vec), in_dims=(0, None, 0))(
            adapted, frozen, task)
    low, high = model.rating_scale
    torch.testing.assert_close(fast, each.clamp(low, high), rtol=1e-9, atol=1e-9)
    if fold_in:  # the support set moved the scores away from the attribute prior
        prior = learner.predict_items(adapted, {**task, "support_mask": torch.zeros_like(task["support_mask"])}, items, item_vec)
        assert (fast - prior).abs().max() > 1e-3


def test_catalogue_scores_when_item_vectors_adapt_too(tiny_split):
    """adapt = "all" (Reptile's scope): item vectors are per user, nothing is hoisted, and the catalogue is
    scored through each user's own embeddings (a regression: this path once assumed hoisted vectors)."""
    split, feats = tiny_split
    model = fold_in_model(tiny_split, fold_in=True)
    learner = MetaLearner(model, MetaConfig(inner_steps=1, inner_lr=0.1, adapt="all"), feats.user_features)
    assert not learner.hoist
    batch = split.validation["new_users"].packed().select(torch.arange(4))
    batch = TaskBatch(*(t.double() if t is not None and t.is_floating_point() else t for t in vars(batch).values()))
    adapted, task = learner.adapt(batch)
    scores = learner.predict_items(adapted, task, batch.query_item[0])
    assert scores.shape == (4, batch.query_item.shape[1]) and torch.isfinite(scores).all()
    low, high = model.rating_scale
    # user 0's scores of its own query items are its query predictions
    query = learner.predict_query(batch)[0]
    torch.testing.assert_close(scores[0], query.clamp(low, high), rtol=1e-9, atol=1e-9)


def test_history_sets_the_prior_the_support_is_folded_in_around(tiny_split):
    model = fold_in_model(tiny_split, history_penalty_scale=2.0).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.head["log_reg"].weight.normal_()
    user = torch.randn(model.user_dim, dtype=torch.float64)
    support = model.embed_items(torch.arange(9)).detach()
    query = model.embed_items(torch.arange(9, 14)).detach()
    rating = torch.tensor([5.0, 5.0, 4.0, 5.0, 1.0, 2.0, 1.0, 3.0, 4.0], dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.float64)  # the last row is padding
    history = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1], dtype=torch.float64)  # a padded row's flag must not count
    with torch.no_grad():
        pred = model.score(user, query, Context(support, rating, mask, history)).numpy()
        prior_q, prior_s = model.score(user, query).numpy(), model.score(user, support).numpy()
    f = model.factors
    z_s, z_q = np.c_[support[:, :f].numpy(), np.ones(9)], np.c_[query[:, :f].numpy(), np.ones(5)]
    reg = np.exp(model.head["log_reg"].weight[0].detach().numpy())
    y = rating.numpy() - prior_s
    centre = ridge(z_s[:4], y[:4], reg)  # the history alone
    delta = centre + ridge(z_s[4:8], y[4:8] - z_s[4:8] @ centre, 2.0 * reg)  # the support, around it
    np.testing.assert_allclose(pred, prior_q + z_q @ delta, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        joined = model.score(user, query, Context(support, rating, mask)).numpy()
        # no flagged row: the plain fold-in; every row flagged: the history's solution
        unflagged = model.score(user, query, Context(support, rating, mask, torch.zeros(9, dtype=torch.float64)))
        only_history = model.score(user, query, Context(support[:4], rating[:4], mask[:4], torch.ones(4, dtype=torch.float64)))
        w, c = model.user_weights(user, Context(support, rating, mask, history))
    assert np.abs(pred - joined).max() > 1e-3  # the history's role changes the prediction
    np.testing.assert_allclose(unflagged.numpy(), joined, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(only_history.numpy(), prior_q + z_q @ centre, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model.score_with_weights(w.unsqueeze(0), c.view(1), query)[0].numpy(), pred, rtol=1e-9, atol=1e-9)
    # the history's solve in new items' space: the history items' vectors as if they were new
    cold = model.embed_items(torch.arange(9), as_new=True).detach()
    assert (cold - support).abs().max() > 1e-3  # their id vectors are gone
    with torch.no_grad():
        in_cold = model.score(user, query, Context(support, rating, mask, history, cold)).numpy()
        prior_cold = model.score(user, cold).numpy()
    z_c = np.c_[cold[:, :f].numpy(), np.ones(9)]
    centre = ridge(z_c[:4], rating.numpy()[:4] - prior_cold[:4], reg)
    delta = centre + ridge(z_s[4:8], y[4:8] - z_s[4:8] @ centre, 2.0 * reg)
    np.testing.assert_allclose(in_cold, prior_q + z_q @ delta, rtol=1e-9, atol=1e-9)


def test_items_as_new_lose_their_id_vectors(tiny_split):
    """embed_items(as_new=True) is the vector a new item gets: the attributes alone, for any item."""
    _, feats = tiny_split
    known, new = int(np.flatnonzero(feats.known_items.numpy())[0]), int(np.flatnonzero(~feats.known_items.numpy())[0])
    for residual in (False, True):
        model = fold_in_model(tiny_split, item_id_residual=residual).eval()
        with torch.no_grad():
            model.item_id.weight.normal_(std=0.3)
            items = torch.tensor([known, new])
            plain, as_new = model.embed_items(items), model.embed_items(items, as_new=True)
            model.item_known.zero_()  # every item new
            all_new = model.embed_items(items)
        torch.testing.assert_close(as_new, all_new)
        torch.testing.assert_close(as_new[1], plain[1])  # a new item is unchanged
        assert (as_new[0] - plain[0]).abs().max() > 1e-3  # a known item loses its id vector


def test_history_penalty_scale_must_be_positive(tiny_split):
    with pytest.raises(ConfigError, match="history_penalty_scale must be > 0"):
        ModelConfig(kind="neural-cf", fold_in=True, history_penalty_scale=0.0)


def test_engine_passes_history_flags_to_the_fold_in(tiny_split):
    """Batched prediction of tasks whose history sets the prior equals scoring each task by hand."""
    split, feats = tiny_split
    model = fold_in_model(tiny_split).eval()
    with torch.no_grad():
        model.head["log_reg"].weight.normal_()
    learner = MetaLearner(model, MetaConfig(inner_steps=0), feats.user_features)
    tasks = split.test["warm"]  # meta-train users; their support is what training saw: keep 3, the rest is history
    tasks = tasks.with_support(np.arange(len(tasks.support_item)) - np.repeat(tasks.support_ptr[:-1], tasks.support_sizes) < 3)
    flagged = tasks.with_history(split.meta_train, as_prior=np.ones(len(tasks), bool))
    assert flagged.support_prior.any() and (flagged.support_sizes > tasks.support_sizes).any()
    batch = flagged.packed()
    batch = TaskBatch(*(t.double() if t is not None and t.is_floating_point() else t for t in vars(batch).values()))
    fast = learner.predict_query(batch).numpy()
    with torch.no_grad():
        for i in range(len(tasks)):
            t = batch.task(i)
            users = feats.user_features.select(t["user_idx"].view(1))
            user = model.embed_users({k: v[0] for k, v in users.single.items()}, {k: v[0] for k, v in users.multi.items()})
            support = model.embed_items(t["support_item"])
            context = Context(support, t["support_rating"], torch.ones_like(t["support_rating"]), t["support_prior"],
                              model.embed_items(t["support_item"], as_new=True))
            slow = model.score(user, model.embed_items(t["query_item"]), context).clamp(1.0, 5.0).numpy()
            np.testing.assert_allclose(fast[i][: len(slow)], slow, rtol=1e-9, atol=1e-9)
    plain = learner.predict_query(TaskBatch(*[*vars(batch).values()][:-1])).numpy()
    assert np.abs(plain - fast).max() > 1e-4  # the flags reached the model
    # without hoisting (every parameter adaptable: item vectors computed per task, under vmap) the same
    per_task = MetaLearner(model, MetaConfig(inner_steps=0, adapt="all"), feats.user_features)
    assert not per_task.hoist
    np.testing.assert_allclose(per_task.predict_query(batch).numpy(), fast, rtol=1e-9, atol=1e-9)
