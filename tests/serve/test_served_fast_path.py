"""A served request's fast paths (support items looked up in the catalogue's precomputed vectors, the
hand-written one-step adaptation, one user's catalogue scored by 2-d products) give the scores of the
general path (the vmap kernel: items embedded again, autograd inner steps, each user's explicit adapted
parameters), on the tiny meta-trained model every serving test uses."""

from __future__ import annotations

import numpy as np
import torch

from metarec.meta.config import MetaConfig
from metarec.meta.learner import MetaLearner
from metarec.tasks.taskset import TaskBatch


def _general_scores(personalizer, ratings: dict, attributes: dict, steps: int | None) -> torch.Tensor:
    """Scores [N] of the whole catalogue without the served shortcuts."""
    idx, values, _ = personalizer.support(ratings)
    items = torch.tensor([idx], dtype=torch.long)
    rating = torch.tensor([values], dtype=torch.float32)
    mask = torch.ones_like(rating)
    batch = TaskBatch(torch.zeros(1, dtype=torch.long), items, rating, mask, items[:, :0], rating[:, :0], mask[:, :0])
    served = personalizer.learner
    learner = MetaLearner(served.model, MetaConfig(**{**vars(served.config), "kernel": "vmap"}), served.user_features)
    adapted, task = learner.adapt(batch, steps=steps, users=personalizer.encode_user(attributes))
    return learner.predict_items(adapted, task, personalizer.all_items, personalizer.catalogue_vec)[0]


def test_served_scores_equal_the_general_path(recommender, popular_ids, serve_data):
    with recommender._pool.borrow() as personalizer:
        assert personalizer.learner.batched and personalizer.catalogue_gram is not None
        for seed, n in enumerate((1, 3, 12)):
            rng = np.random.default_rng(seed)
            ratings = {popular_ids[int(i)]: float(rng.integers(1, 6)) for i in rng.choice(40, n, replace=False)}
            attributes = serve_data.new_user(seed)
            for steps in (None, 0, 2):
                served = personalizer.adapt(ratings, attributes, steps=steps).catalogue_score_tensor()[0]
                general = _general_scores(personalizer, ratings, attributes, steps)
                assert served.shape == general.shape == (len(personalizer.item_vocab),)
                assert torch.allclose(served, general, atol=1e-5, rtol=0)
                assert float(served.std()) > 0
