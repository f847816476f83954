"""A method a benchmark compares: fitted on meta-train users, selected on validation users (one score)."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np

from metarec.eval.metrics import mae_rmse
from metarec.tasks import ColdStartSplit
from metarec.tasks.selection import validation_score
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

MAX_SCORE_CELLS = 20_000_000  # tasks x catalogue scores held at once by a scorer (160 MB)


def selection_score(predict: Callable[[TaskSet], np.ndarray], split: ColdStartSplit,
                    support_sizes: Sequence[int] = ()) -> float:
    """A method's validation score (:func:`metarec.tasks.selection.validation_score`) from its
    predictions: the same number the trainer's ``k-curve`` selection computes for a meta-learner."""
    return validation_score(lambda tasks: mae_rmse(tasks, predict(tasks))["mae"], split, support_sizes)

class Method:
    """A fitted method exposes one or more *variants* (e.g. a meta-learner with and without adaptation)."""

    name: str
    family: str  # "baseline" or "meta"
    history: list[dict]

    def fit(self, split: ColdStartSplit) -> None:
        raise NotImplementedError

    def variants(self) -> list[str]:
        return [self.name]

    def predict(self, variant: str, tasks: TaskSet) -> np.ndarray:
        raise NotImplementedError

    def scorer(self, variant: str, tasks: TaskSet, catalogue: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        raise NotImplementedError

    def rates(self, variant: str) -> bool:
        """Whether the variant predicts ratings (popularity only ranks)."""
        return True

    def choose_pool_scale(self, split: ColdStartSplit) -> None:
        """Prepare the pooled item fold-in (its penalty scale chosen on validation users); a method
        without item parameters has none."""

    @contextmanager
    def pooled(self, variant: str, tasks: TaskSet) -> Iterator[None]:
        """Within the block the variant scores new items folded in from ``tasks``' support sets."""
        yield

    def _choose_scale(self, split: ColdStartSplit, variant: str, candidates: Sequence[float],
                      apply: Callable[[float], None]) -> float:
        """The candidate with the lowest validation MAE on validation users' new-item tasks, each pooled
        over those tasks' support sets (``apply`` installs a candidate); without them (MetaHIN's splits
        have none), 1: the method's own penalty."""
        val = split.validation.get("new_users_new_items")
        if val is None or not len(val) or not self.rates(variant):
            return 1.0
        best, best_mae = candidates[0], math.inf
        for candidate in candidates:
            apply(candidate)
            with self.pooled(variant, val):
                m = mae_rmse(val, self.predict(variant, val))["mae"]
            self.history.append({"pool_candidate": float(candidate), "val_new_items_mae": m})
            if m < best_mae:
                best, best_mae = candidate, m
        return best


def catalogue_lookup(score_catalogue: Callable[[TaskSet, np.ndarray], np.ndarray], tasks: TaskSet,
                     catalogue: np.ndarray, max_cells: int = MAX_SCORE_CELLS) -> Callable[[int, np.ndarray], np.ndarray]:
    """``lambda t, cand: scores[t, position[cand]]`` over ``score_catalogue(tasks, catalogue)``'s
    [tasks, catalogue] matrix. Past ``max_cells`` cells the matrix is made one block of tasks at
    a time, when a task of the block is first asked for (the ranking asks in task order), so memory stays
    bounded; every block is scored once if the calls come in order."""
    position = np.full(int(catalogue.max()) + 1 if len(catalogue) else 1, -1, np.int64)
    position[catalogue] = np.arange(len(catalogue))
    step = max(1, max_cells // max(len(catalogue), 1))
    if len(tasks) <= step:
        scores = score_catalogue(tasks, catalogue)
        return lambda t, cand: scores[t, position[cand]]
    block: dict[str, object] = {"start": -1, "scores": None}

    def lookup(t: int, cand: np.ndarray) -> np.ndarray:
        start = t - t % step
        if block["start"] != start:
            block["start"] = start
            block["scores"] = score_catalogue(tasks.subset(np.arange(start, min(start + step, len(tasks)))), catalogue)
        return block["scores"][t - start, position[cand]]

    return lookup
