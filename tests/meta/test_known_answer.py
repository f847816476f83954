"""Known-answer test: on data whose users' tastes are partly invisible in their attributes, adapting to
5 ratings must recover a measurable part of what the generator says is recoverable."""

from __future__ import annotations

import pytest

from metarec.data.synthetic import SyntheticConfig, adaptation_gain_bound, make_synthetic
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer
from metarec.tasks import make_split


@pytest.mark.slow
def test_adaptation_recovers_the_idiosyncratic_taste():
    synthetic = make_synthetic(SyntheticConfig(seed=0))
    config = (RunConfig.preset("feature-mlp", "maml")
              .override("model", embedding_size=16, hidden=[64, 64], item_id_embedding=True)
              .override("meta", inner_lr=0.2, inner_steps=3, adapt="head")
              .override("train", epochs=30, patience=6, seed=0))
    split = make_split(synthetic.dataset, config.split)
    trainer = Trainer(config, split=split)
    trainer.fit()
    new_users = split.with_support_size(5).test["new_users"]
    adapted = trainer.learner.evaluate(new_users)
    frozen = trainer.learner.evaluate(new_users, steps=0)

    bound = adaptation_gain_bound(synthetic.truth, support_size=5, users=new_users.user_idx)
    # What 5 ratings can reveal: the attribute-only predictor's RMSE minus that of the best posterior.
    predicted_gain = bound["attribute_rmse"] - bound["adapted_rmse"]
    assert predicted_gain > 0.05  # the generator does hide something the ratings reveal
    assert frozen["rmse"] - adapted["rmse"] >= 0.5 * predicted_gain
    assert frozen["mae"] - adapted["mae"] >= 0.5 * predicted_gain
    # nothing beats the noise floor
    assert adapted["rmse"] > bound["oracle_rmse"]
