"""The benchmark's ensemble of meta-learners: the recipe's meta-learner trained from M initialisations, its
prediction the members' mean.

On validation users the meta-learner's initialisations disagree more than its settings do (ML-100K: the
mean of 5 is 0.002-0.004 below one of them; Last.fm: the mean of 3 is 0.006 below, and a longer running
average or a smaller step does not get it, docs/experiments/few-shot.md). The recipe is chosen once, by
the first member (the same search, seed and model as the ``maml`` method); the others train the chosen
configuration from other seeds, by the rule ``metarec train --members M`` trains its members by
(:func:`metarec.meta.ensemble.member_config`): the benchmark's ensemble is the model that command writes."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import numpy as np

from metarec.eval.benchmark.meta_method import MetaMethod
from metarec.eval.benchmark.method import Method, catalogue_lookup
from metarec.meta.ensemble import member_config
from metarec.meta.run import RunConfig
from metarec.tasks import ColdStartSplit
from metarec.tasks.taskset import TaskSet



class EnsembleMethod(Method):
    """``members`` meta-learners; ``make_member(config_or_none)`` builds one: with None the first (its own
    configuration and recipe search), with a RunConfig a member trained on that configuration as it is."""

    family = "meta"

    def __init__(self, name: str, members: int, seed: int,
                 make_member: Callable[[RunConfig | None], MetaMethod]) -> None:
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        self.name = name
        self.n_members = int(members)
        self.seed = int(seed)
        self.make_member = make_member
        self.members: list[MetaMethod] = []
        self.history: list[dict] = []

    def fit(self, split: ColdStartSplit) -> None:
        first = self.make_member(None)
        first.config = first.config.override("train", seed=self.seed)
        first.fit(split)
        self.members = [first]
        self.history = list(first.history)
        for m in range(1, self.n_members):
            member = self.make_member(member_config(first.config, m))
            member.fit(split)
            self.members.append(member)
            self.history.append({"ensemble_member": m, "train_seed": member.config.train.seed,
                                 "epochs": sum(1 for h in member.history if "epoch" in h)})

    def variants(self) -> list[str]:
        return [self.name]

    def predict(self, variant: str, tasks: TaskSet) -> np.ndarray:
        return np.mean([m.predict(m.name, tasks) for m in self.members], axis=0)

    def scorer(self, variant: str, tasks: TaskSet, catalogue: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        return catalogue_lookup(lambda t, c: np.mean([m.catalogue_scores(m.name, t, c) for m in self.members], axis=0),
                                tasks, catalogue)

    def choose_pool_scale(self, split: ColdStartSplit) -> None:
        for member in self.members:  # each member's item penalty is its own
            member.choose_pool_scale(split)

    @contextmanager
    def pooled(self, variant: str, tasks: TaskSet) -> Iterator[None]:
        with ExitStack() as stack:
            for member in self.members:
                stack.enter_context(member.pooled(member.name, tasks))
            yield
