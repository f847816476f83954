"""MetaLearner.predict_tasks: batched by support length, answered in task order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from metarec.models import ModelConfig, build_model


@pytest.mark.parametrize("kind, steps", [("feature-mlp", 2), ("neural-cf", 0)])
def test_predictions_come_back_in_task_order_whatever_the_batching(tiny_split, kind, steps):
    split, feats = tiny_split
    model = build_model(ModelConfig(kind=kind, embedding_size=8, hidden=(16,), factors=8, item_id_embedding=True,
                                    fold_in=kind == "neural-cf"),
                        feats.user_encoder, feats.item_encoder, feats.item_features, known_items=feats.known_items,
                        rating_scale=(1.0, 5.0), seed=3).to(torch.float64)
    learner = MetaLearner(model, MetaConfig(inner_steps=steps, **({"inner_lr": 0.1} if steps else {})), feats.user_features)
    tasks = split.meta_train
    assert len(set(tasks.support_sizes.tolist())) > 3  # unequal supports: the sort by length reorders tasks
    # one task at a time, in task order: the reference
    packed = tasks.packed()
    expected = np.concatenate([learner.predict_query(packed.select([t]), steps)[0, : tasks.query_sizes[t]].detach().numpy()
                               for t in range(len(tasks))])
    for batch_size, max_ratings in ((256, 262_144), (7, 262_144), (64, 40)):
        got = learner.predict_tasks(tasks, steps, batch_size=batch_size, max_batch_ratings=max_ratings)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    metrics = learner.evaluate(tasks, steps, batch_size=7)
    err = expected - tasks.query_rating
    assert metrics["mae"] == pytest.approx(np.abs(err).mean()) and metrics["n"] == len(err)
    assert metrics["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()))
