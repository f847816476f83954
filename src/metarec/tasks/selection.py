"""The validation score every method is selected on (a baseline's grid, a meta-learner's epoch, the recipe).

Why one function: a meta-learner and a baseline tuned on different objectives are not compared fairly.
The score is the validation MAE with each task's whole support and, for each K in ``support_sizes``, with
the support cut to K ratings (:meth:`ColdStartSplit.validation_with_support_size`), each point the mean
over the validation scenarios (new users, and new users on new items: equal weight, as each is reported
on its own), and the score the mean over the points. Without ``support_sizes`` it is the whole-support
MAE alone.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet

MaeOf = Callable[[TaskSet], float]  # a method's MAE over one task set's query ratings


def validation_curve(mae_of: MaeOf, split: ColdStartSplit, support_sizes: Sequence[int] = ()) -> dict[str, float]:
    """``{"all": ..., "k1": ..., ...}``: each point of the validation K-curve, the mean over the validation
    scenarios that have tasks (NaN where none has)."""
    points = {"all": split.validation, **{f"k{k}": split.validation_with_support_size(k) for k in support_sizes}}
    out = {}
    for name, by_scenario in points.items():
        values = [mae_of(tasks) for tasks in by_scenario.values() if len(tasks)]
        out[name] = float(np.mean(values)) if values else math.nan
    return out


def validation_score(mae_of: MaeOf, split: ColdStartSplit, support_sizes: Sequence[int] = ()) -> float:
    """The mean of :func:`validation_curve`'s points (those with tasks)."""
    values = [v for v in validation_curve(mae_of, split, support_sizes).values() if v == v]
    return float(np.mean(values)) if values else math.nan
