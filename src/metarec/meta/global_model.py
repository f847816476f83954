"""The baseline meta-learning must beat with the same architecture: one global model, no meta-learning.

Trained by ordinary supervised learning on every rating of the meta-train users (expressed as tasks whose
query is all of their ratings and with no inner step), selected on validation users like the
meta-learner, then evaluated without and with per-user fine-tuning on the support set with the same
inner steps and learning rate the meta-learner gets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer
from metarec.tasks.split import ColdStartSplit


def global_config(config: RunConfig) -> RunConfig:
    """The meta-learner's config turned into plain training: no inner step while training, the
    meta-learner's own inner steps (and lr) as fine-tuning at evaluation."""
    meta = config.meta
    # Its tasks' query is already every rating of the user: nothing to resample.
    return RunConfig(config.data, config.split, config.model,
                     replace(meta, algorithm="fomaml", inner_steps=0, eval_inner_steps=meta.test_steps,
                             support_batch_size=None), replace(config.train, resample_query=False, short_support_fraction=0.0))


def train_global_model(config: RunConfig, split: ColdStartSplit, run_dir: str | Path | None = None) -> Trainer:
    """Fit the global model; the returned trainer's learner evaluates with ``steps=0`` (no fine-tuning)
    or by default with the meta-learner's inner-step budget (fine-tuned per user). Each use has its own
    epoch, chosen on validation users: ``restore_best()`` is the one best fine-tuned,
    ``best_unadapted_params`` the one best without fine-tuning (the fine-tuned MAE usually bottoms out
    after the first epoch, long before the unadapted one does)."""
    whole = replace(split, meta_train=split.meta_train.as_whole_query(), _cache={})
    trainer = Trainer(global_config(config), split=whole, run_dir=run_dir, select_unadapted=True)
    trainer.fit()
    return trainer
