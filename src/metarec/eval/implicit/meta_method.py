"""The meta-learner in the implicit benchmark: NeuralCF whose user factors are folded in against the whole
catalogue (the iALS fold-in, in closed form, around an attribute prior), meta-trained with a ranking loss on
sampled negatives, the epoch selected on the benchmark's own validation score.

New items (items training never saw) are known to the model only through its item tower. An artist on
Last.fm is described by a handful of tags, and the direct overlap of a new item's attributes with the user's
support items ranks new items better than those tags passed through the tower (the ``content`` baseline
wins the new-users-on-new-items scenario there). So the new items of a task are *re-ordered* by
``z(meta) + w z(content)`` (each standardised over the task's new items; content: the mean attribute cosine
to the support items, :class:`~metarec.baselines.implicit.content.ContentKNN`), and handed the meta-learner's
own scores for new items in that order. The set of scores new items get is the meta-learner's, so where new
items stand against known ones, and every known item's rank, are unchanged; only which new item takes which
of those places moves. ``w`` is chosen on the validation users of the new-users-on-new-items scenario
(``w = 0``: the meta-learner alone; its score is recorded beside the others).

The settings below are one recipe for every dataset; ``ImplicitMetaMethod(config, overrides)`` changes
them (the run.toml sections ``model``, ``meta`` and ``implicit``), and the chosen ones are recorded.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch

from metarec.baselines.implicit.content import ContentKNN, item_attribute_matrix
from metarec.errors import DataError
from metarec.eval.implicit.method import Selection, support_positives, validation_score
from metarec.meta.config import MetaConfig
from metarec.meta.implicit import ImplicitTrainConfig, Progress, catalogue_scores, train_implicit
from metarec.meta.learner import MetaLearner
from metarec.models import ModelConfig, build_model
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
        self.content: ContentKNN | None = None
        self.content_weight = 0.0
        self.new_items: np.ndarray | None = None

    def fit(self, split: ColdStartSplit, seed: int, progress: Progress | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> None:
        """Meta-train on ``split.meta_train``, the epoch chosen on validation users. ``progress`` sees the
        batches and epochs, ``on_epoch`` each epoch's record (with its validation score)."""
        features = self.features = encode_features(split)
        model = build_model(self.model_config, features.user_encoder, features.item_encoder, features.item_features,
                            known_items=features.known_items, rating_scale=split.dataset.rating_scale, seed=seed)
        self.learner = MetaLearner(model, self.meta_config, features.user_features)
        selection = self.config.selection(seed)
        known = np.asarray(split.known_items(), dtype=bool)
        popularity = np.bincount(split.meta_train.rows()["item_idx"], minlength=model.n_items).astype(np.float64)
        train = replace(self.train_config, seed=seed)

        def validate(learner: MetaLearner) -> float:
            return validation_score(self.score, split, selection)[0]

        result = train_implicit(self.learner, split.meta_train, model.n_items, train, validate, candidates=known,
                                popularity=popularity, progress=progress, on_epoch=on_epoch)
        self.history = result.history
        self.chosen = {"best_epoch": result.best_epoch, "validation": result.best_score,
                       "model": _plain(asdict(self.model_config)), "meta": _plain(asdict(self.meta_config)),
                       "implicit": _plain(asdict(train))}
        log.info("implicit meta-learner: best epoch %d, validation %.4f", result.best_epoch, result.best_score)
        self._choose_content_weight(split, selection)

    def _choose_content_weight(self, split: ColdStartSplit, selection: Selection) -> None:
        """``w`` for the new items' order (module docstring), on the both-new validation users; 0 without
        new items, item attributes or such users."""
        self.content, self.content_weight, self.new_items = None, 0.0, None
        new_items = np.asarray(split.new_item_mask, dtype=bool)
        if not new_items.any() or BOTH_NEW not in split.validation or not len(split.validation[BOTH_NEW]):
            return
        try:
            attributes = item_attribute_matrix(split.dataset.items, split.dataset.item_schema)
        except DataError as error:  # no attribute to compare items by: the meta-learner alone
            log.info("implicit meta-learner: new items keep the model's order (%s)", error)
            return
        rows = split.meta_train.rows()
        keep = rows["rating"] > 0
        self.content = ContentKNN(attributes=attributes).fit(
            rows["user_idx"][keep].astype(np.int64), rows["item_idx"][keep].astype(np.int64),
            rows["rating"][keep].astype(np.float64), split.dataset.n_items)
        self.new_items = new_items
        both_new = replace(selection, scenario=BOTH_NEW)
        scores = []
        for weight in CONTENT_WEIGHTS:
            self.content_weight = weight
            score = validation_score(self.score, split, both_new)[0]
            scores.append(score)
            log.info("implicit meta-learner: new items ordered with content weight %g: both-new validation %.4f",
                     weight, score)
        best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
        self.content_weight = CONTENT_WEIGHTS[best]
        self.chosen["content_weight"] = self.content_weight
        self.chosen["content_weight_validation"] = {str(w): s for w, s in zip(CONTENT_WEIGHTS, scores)}

    def score(self, tasks: TaskSet) -> np.ndarray:
        if self.learner is None:
            raise RuntimeError("fit the method before scoring")
        with torch.no_grad():
            scores = catalogue_scores(self.learner, tasks)
        if self.content is None or self.content_weight == 0.0 or self.new_items is None:
            return scores
        similarity = self.content.score(*support_positives(tasks))
        return reorder_new_items(np.asarray(scores), similarity, self.new_items, self.content_weight)


def reorder_new_items(scores: np.ndarray, similarity: np.ndarray, new_items: np.ndarray, weight: float) -> np.ndarray:
    """``scores`` [B, N] with each row's new items (``new_items`` [N] bool) re-ordered by
    ``z(scores) + weight * z(similarity)`` (z: standardised over the row's new items) and handed the row's
    own new-item scores in that order: the multiset of new-item scores, hence every known item's rank, is kept."""
    out = np.array(scores, dtype=np.float32, copy=True)
    columns = np.flatnonzero(new_items)
    if not len(columns):
        return out
    own = out[:, columns].astype(np.float64)
    sim = np.asarray(similarity, dtype=np.float64)[:, columns]

    def z(x: np.ndarray) -> np.ndarray:
        spread = x.std(axis=1, keepdims=True)
        return (x - x.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)

    mixed = z(own) + weight * z(sim)
    order = np.argsort(mixed, axis=1, kind="stable")  # ascending: the lowest mix takes the lowest score
    values = np.sort(own, axis=1)
    placed = np.empty_like(own)
    np.put_along_axis(placed, order, values, axis=1)
    out[:, columns] = placed.astype(np.float32)
    return out


def _plain(values: Mapping[str, Any]) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
