"""What the implicit benchmark runs: the method interface, and the one validation score every method is
selected on (a baseline's grid, a meta-learner's own selection, the choice of the best baseline).

Why one score: a meta-learner and a baseline tuned on different objectives are not compared fairly.
A method module may import this one (never ``run`` or ``methods``, which import the methods).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from metarec.errors import ConfigError
from metarec.eval.implicit.metrics import KS, rank_tasks, scenario_catalogue
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet

# per split (gone with it): the validation tasks of each selection
_POINTS: "weakref.WeakKeyDictionary[ColdStartSplit, dict]" = weakref.WeakKeyDictionary()
Scorer = Callable[[TaskSet], np.ndarray]  # tasks -> scores [len(tasks), n_items], higher = better


@runtime_checkable
class ImplicitMethod(Protocol):
    """A method of the implicit benchmark.

    ``fit`` sees the split's meta-train tasks and may select itself on ``split.validation`` - with
    :func:`validation_score` and ``config.selection(seed)``, the score the runner reports; the runner
    hands it the split without its test tasks (``split.test`` is empty) and scores test users once, after. ``score`` gives every item a score
    for each task from its support positives only (``[len(tasks), n_items]``, higher = better; support
    items need not be masked, the metrics do it). A method may also expose ``history`` (a list of dicts,
    e.g. its grid's validation scores) and ``chosen`` (its selected settings); the runner records both."""

    name: str

    def fit(self, split: ColdStartSplit, seed: int) -> None: ...

    def score(self, tasks: TaskSet) -> np.ndarray: ...


@dataclass(frozen=True)
class Selection:
    """How methods are selected on validation users: ``metric`` (a per-task metric of
    :func:`~metarec.eval.implicit.metrics.rank_tasks`) averaged over the ``scenario``'s validation tasks,
    with their whole support and cut to each K of ``support_sizes``; the score is the mean of those
    points. At most ``max_tasks`` validation users (a seeded choice, the same at every K) keep it cheap."""

    metric: str = "ndcg@20"
    scenario: str = "new_users"
    support_sizes: tuple[int, ...] = (1, 3, 5)
    max_tasks: int | None = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        name, _, k = self.metric.partition("@")
        if self.metric != "mrr" and (name not in ("recall", "ndcg", "hit") or not k.isdigit() or int(k) < 1):
            raise ConfigError(f"selection metric must be recall@k, ndcg@k, hit@k or mrr, got {self.metric!r}")
        if any(k < 1 for k in self.support_sizes):
            raise ConfigError("selection support sizes must be >= 1")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ConfigError(f"max validation tasks must be >= 1, got {self.max_tasks}")

    @property
    def ks(self) -> tuple[int, ...]:
        k = self.metric.partition("@")[2]
        return (int(k),) if k else KS


def validation_points(split: ColdStartSplit, selection: Selection) -> dict[str, TaskSet]:
    """``{"all": tasks, "k1": tasks, ...}``: the validation tasks every candidate is scored on, cached on
    the split so a grid and the runner score the very same tasks."""
    cached = _POINTS.setdefault(split, {})
    if selection in cached:
        return cached[selection]
    whole = split.validation.get(selection.scenario)
    if whole is None:
        raise ConfigError(f"the split has no validation tasks of scenario {selection.scenario!r}; "
                          f"it has {sorted(split.validation)}")
    keep_users = np.unique(whole.user_idx)
    if selection.max_tasks is not None and len(keep_users) > selection.max_tasks:
        rng = np.random.default_rng([selection.seed, split.config.seed])
        keep_users = np.sort(rng.choice(keep_users, selection.max_tasks, replace=False))

    def chosen(tasks: TaskSet) -> TaskSet:
        return tasks.subset(np.isin(tasks.user_idx, keep_users))

    points = {"all": chosen(whole)}
    for k in selection.support_sizes:
        points[f"k{k}"] = chosen(split.validation_with_support_size(k)[selection.scenario])
    cached[selection] = points
    return points


def validation_score(score: Scorer, split: ColdStartSplit, selection: Selection) -> tuple[float, dict[str, float]]:
    """The selection score of a scorer (higher = better; NaN without validation tasks) and each point."""
    catalogue = scenario_catalogue(split, selection.scenario)
    points = {}
    for name, tasks in validation_points(split, selection).items():
        if not len(tasks):
            points[name] = math.nan
            continue
        points[name] = rank_tasks(score(tasks), tasks, catalogue, selection.ks).means()[selection.metric]
    values = [v for v in points.values() if v == v]
    return (float(np.mean(values)) if values else math.nan), points


def support_positives(tasks: TaskSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tasks' support positives as CSR (ptr, item, confidence): sampled negatives (rating 0) left out."""
    keep = tasks.support_rating > 0
    counts = np.bincount(tasks.support_task[keep], minlength=len(tasks))
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ptr, tasks.support_item[keep].astype(np.int64), tasks.support_rating[keep].astype(np.float64)
