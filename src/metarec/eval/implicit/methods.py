"""The implicit benchmark's methods by name: the implicit baselines (each tuned on validation users through
:class:`BaselineMethod`) and the meta-learner (``meta``, imported only when asked for)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from metarec.baselines.implicit import IMPLICIT_BASELINES, ImplicitBaseline, default_grid, item_attribute_matrix
from metarec.errors import ConfigError
from metarec.eval.implicit.config import IMPLICIT_BASELINE_NAMES, ImplicitBenchmarkConfig
from metarec.eval.implicit.method import ImplicitMethod, Selection, support_positives, validation_score
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

META = "meta"
META_ENSEMBLE = "meta-ensemble"  # run only when named: ``meta`` from 3 initialisations, scores averaged
KNOWN_METHODS = (*IMPLICIT_BASELINE_NAMES, META, META_ENSEMBLE)


def training_interactions(split: ColdStartSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, confidence) of every positive of the meta-train tasks (support and query): what a
    baseline fits on, and what the training popularity counts."""
    rows = split.meta_train.rows()
    keep = rows["rating"] > 0
    return (rows["user_idx"][keep].astype(np.int64), rows["item_idx"][keep].astype(np.int64),
            rows["rating"][keep].astype(np.float64))


class BaselineMethod:
    """An implicit baseline as an :class:`ImplicitMethod`: ``fit`` fits it once per grid point on the
    meta-train positives and keeps the point with the best validation score (``history`` holds every
    point's score, ``chosen`` the winner's settings); ``score`` scores a task from its support positives.
    ``selection``: the validation score's settings, or a function of the seed giving them
    (:meth:`ImplicitBenchmarkConfig.selection`)."""

    def __init__(self, name: str, selection: Selection | Callable[[int], Selection],
                 grid: Sequence[Mapping[str, Any]] | None = None) -> None:
        if name not in IMPLICIT_BASELINES:
            raise ConfigError(f"unknown implicit baseline {name!r}; known: {', '.join(IMPLICIT_BASELINES)}")
        self.name = name
        self.selection = selection
        self.grid = [dict(p) for p in (default_grid(name) if grid is None else grid)]
        if not self.grid:
            raise ConfigError(f"{name}: the hyperparameter grid is empty")
        self.model: ImplicitBaseline | None = None
        self.history: list[dict] = []
        self.chosen: dict[str, Any] = {}

    def fit(self, split: ColdStartSplit, seed: int) -> None:
        user, item, confidence = training_interactions(split)
        selection = self.selection if isinstance(self.selection, Selection) else self.selection(seed)
        best = -math.inf
        self.history, self.model = [], None
        attributes = None
        for params in self.grid:
            started = time.perf_counter()
            model = self._build(params, seed)
            if hasattr(model, "with_items"):  # content-based: knows items by their attributes (every item's)
                if attributes is None:
                    dataset = split.dataset
                    attributes = item_attribute_matrix(dataset.items, dataset.item_schema)
                model.with_items(attributes)
            model = model.fit(user, item, confidence, split.dataset.n_items)
            seconds = time.perf_counter() - started
            score, points = validation_score(lambda tasks, m=model: _score(m, tasks), split, selection)
            self.history.append({"params": params, "validation": score, "points": points, "fit_seconds": seconds})
            log.info("%s %s: validation %s %.4f (fitted in %.1f s)", self.name, params, selection.metric, score, seconds)
            if self.model is None or score > best:  # NaN never wins over a number; the first point is kept as a fallback
                best, self.model, self.chosen = score, model, dict(params)

    def score(self, tasks: TaskSet) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(f"{self.name} is not fitted; call fit(split, seed) first")
        return _score(self.model, tasks)

    def _build(self, params: Mapping[str, Any], seed: int) -> ImplicitBaseline:
        cls = IMPLICIT_BASELINES[self.name]
        model = cls(**params)
        config = getattr(model, "config", None)
        if ("seed" not in params and dataclasses.is_dataclass(config)
                and "seed" in {f.name for f in dataclasses.fields(config)}):
            model = cls(**params, seed=seed)  # each benchmark seed its own initialisation
        return model


def _score(model: ImplicitBaseline, tasks: TaskSet) -> np.ndarray:
    return model.score(*support_positives(tasks))


def make_method(name: str, config: ImplicitBenchmarkConfig) -> ImplicitMethod:
    """A fresh method for one seed: a baseline by name (its grid from ``config.grids`` or its default),
    or ``meta``, :class:`metarec.eval.implicit.meta_method.ImplicitMetaMethod` built as
    ``ImplicitMetaMethod(config)``."""
    if name in IMPLICIT_BASELINE_NAMES:
        grid = (config.grids or {}).get(name)
        return BaselineMethod(name, config.selection, grid)
    if name == META:
        from metarec.eval.implicit.meta_method import ImplicitMetaMethod

        return ImplicitMetaMethod(config)
    if name == META_ENSEMBLE:
        from metarec.eval.implicit.ensemble_method import ImplicitEnsembleMethod

        return ImplicitEnsembleMethod(config, config.ensemble_members)
    raise ConfigError(f"unknown implicit method {name!r}; known: {', '.join(KNOWN_METHODS)}")
