"""The meta-learner in the implicit benchmark: NeuralCF whose user factors are folded in against the whole
catalogue (the iALS fold-in, in closed form, around an attribute prior), meta-trained with a ranking loss on
sampled negatives, the epoch selected on the benchmark's own validation score.

A user's new items (items training never saw) are re-ordered by their attribute similarity to the user's
items, in the places the model gave them (:mod:`metarec.models.new_item_order`; known items' ranks are
unchanged). The weight ``w`` is chosen on the validation users of the new-users-on-new-items scenario
(``w = 0``: the meta-learner alone; its score is recorded beside the others) and recorded in ``chosen``,
where ``metarec train --feedback implicit`` takes it for the served model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch

from metarec.eval.implicit.method import Selection, support_positives, validation_score
from metarec.meta.config import MetaConfig
from metarec.meta.implicit import (Checkpointer, ImplicitResume, ImplicitTrainConfig, Progress, catalogue_scores,
                                   train_implicit)
from metarec.meta.learner import MetaLearner
from metarec.models import ModelConfig, build_model
from metarec.models.new_item_order import NewItemOrder
from metarec.tasks.features import FeatureSpace, encode_features
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

RECIPE_MODEL = ModelConfig(kind="neural-cf", embedding_size=32, hidden=(128,), factors=64, fold_in=True,
                           item_id_embedding=True, item_id_residual=True, implicit=True, support_map=True)
RECIPE_META = MetaConfig(algorithm="maml", adapt="head", inner_steps=0, query_loss="softmax", outer_lr=2e-3,
                         meta_batch_size=64, grad_clip=10.0)
RECIPE_TRAIN = ImplicitTrainConfig(epochs=30, patience=4, query_negatives=8.0, short_support_fraction=0.9,
                                   short_support_max=20)
CONTENT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 1e6)  # w of z(meta) + w z(content); 1e6: content's order
BOTH_NEW = "new_users_new_items"


class ImplicitMetaMethod:
    """``meta``: the meta-learned implicit fold-in (see the module docstring)."""

    name = "meta"

    def __init__(self, config: Any, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 threads: int | None = None) -> None:
        self.config = config
        over = {k: dict(v) for k, v in (overrides or {}).items()}
        self.model_config = replace(RECIPE_MODEL, **over.get("model", {}))
        self.meta_config = replace(RECIPE_META, **over.get("meta", {}))
        self.train_config = replace(RECIPE_TRAIN, **over.get("implicit", {}))
        self.learner: MetaLearner | None = None
        self.features: FeatureSpace | None = None
        self.history: list[dict] = []
        self.chosen: dict = {}
        self.new_item_order: NewItemOrder | None = None

    def fit(self, split: ColdStartSplit, seed: int, progress: Progress | None = None,
            on_epoch: Callable[[dict], None] | None = None, *, checkpoint: Checkpointer | None = None,
            resume: ImplicitResume | None = None) -> None:
        """Meta-train on ``split.meta_train``, the epoch chosen on validation users. ``progress`` sees the
        batches and epochs, ``on_epoch`` each epoch's record (with its validation score), ``checkpoint`` the
        run's state after each epoch (:func:`~metarec.meta.implicit.train_implicit`); ``resume`` continues a
        run from a saved state."""
        features = self.features = encode_features(split)
        model = build_model(self.model_config, features.user_encoder, features.item_encoder, features.item_features,
                            known_items=features.known_items, rating_scale=split.dataset.rating_scale, seed=seed)
        self.learner = MetaLearner(model, self.meta_config, features.user_features)
        if resume is not None:
            self.learner.load_training_state(resume.last)
        selection = self.config.selection(seed)
        known = np.asarray(split.known_items(), dtype=bool)
        popularity = np.bincount(split.meta_train.rows()["item_idx"], minlength=model.n_items).astype(np.float64)
        train = replace(self.train_config, seed=seed)

        def validate(learner: MetaLearner) -> float:
            return validation_score(self.score, split, selection)[0]

        result = train_implicit(self.learner, split.meta_train, model.n_items, train, validate, candidates=known,
                                popularity=popularity, progress=progress, on_epoch=on_epoch, checkpoint=checkpoint,
                                start=None if resume is None else resume.state,
                                best_params=None if resume is None else resume.best_params)
        self.history = result.history
        self.chosen = {"best_epoch": result.best_epoch, "validation": result.best_score,
                       "model": _plain(asdict(self.model_config)), "meta": _plain(asdict(self.meta_config)),
                       "implicit": _plain(asdict(train))}
        log.info("implicit meta-learner: best epoch %d, validation %.4f", result.best_epoch, result.best_score)
        self._choose_content_weight(split, selection)

    def _choose_content_weight(self, split: ColdStartSplit, selection: Selection) -> None:
        """``w`` of the new items' order (module docstring), on the both-new validation users; none without
        new items, item attributes or such users."""
        self.new_item_order = None
        features = self.features
        assert features is not None
        known = features.known_items.cpu().numpy()
        if known.all() or BOTH_NEW not in split.validation or not len(split.validation[BOTH_NEW]):
            return
        order = NewItemOrder.from_features(features.item_features, features.item_encoder, known, 0.0)
        if order.attributes.shape[1] == 0:
            log.info("implicit meta-learner: no item attribute to compare new items by; the model's order is kept")
            return
        both_new = replace(selection, scenario=BOTH_NEW)
        scores = []
        for weight in CONTENT_WEIGHTS:
            self.new_item_order = replace(order, weight=weight)
            score = validation_score(self.score, split, both_new)[0]
            scores.append(score)
            log.info("implicit meta-learner: new items ordered with content weight %g: both-new validation %.4f",
                     weight, score)
        best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
        self.new_item_order = replace(order, weight=CONTENT_WEIGHTS[best]) if CONTENT_WEIGHTS[best] > 0 else None
        self.chosen["content_weight"] = CONTENT_WEIGHTS[best]
        self.chosen["content_weight_validation"] = {str(w): s for w, s in zip(CONTENT_WEIGHTS, scores)}

    @property
    def content_weight(self) -> float:
        """The chosen ``w`` (0: new items keep the model's order)."""
        return 0.0 if self.new_item_order is None else self.new_item_order.weight

    def model_scores(self, tasks: TaskSet) -> np.ndarray:
        """The model's own catalogue scores [len(tasks), n_items], before the new items' order."""
        if self.learner is None:
            raise RuntimeError("fit the method before scoring")
        with torch.no_grad():
            return catalogue_scores(self.learner, tasks)

    def score(self, tasks: TaskSet) -> np.ndarray:
        scores = self.model_scores(tasks)
        if self.new_item_order is None or self.new_item_order.weight == 0:
            return scores
        ptr, item, _ = support_positives(tasks)
        return self.new_item_order.apply(np.asarray(scores), ptr, item)


def _plain(values: Mapping[str, Any]) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
