"""The implicit benchmark's ensemble of meta-learners (``meta-ensemble``, run only when named): the ``meta``
method trained from M initialisations, each user's catalogue scored by the members' mean score, the new items
then ordered as ``meta`` orders them, with a content weight chosen for the mean on the both-new validation
users. The first member is the ``meta`` method's own model (same seed); the others train from seed + 1000 m.

Why: the explicit benchmark's ensemble (:mod:`metarec.eval.benchmark.ensemble_method`) turned ties into wins
where one initialisation's noise was the margin; this measures the same on implicit feedback. The
model ``metarec train --feedback implicit --members M`` serves is built by :meth:`ImplicitEnsembleMethod.adopt`."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from metarec.meta.ensemble import member_seed_of
from metarec.eval.implicit.meta_method import ImplicitMetaMethod
from metarec.tasks.split import ColdStartSplit
from metarec.tasks.taskset import TaskSet


class ImplicitEnsembleMethod(ImplicitMetaMethod):
    """``members`` :class:`ImplicitMetaMethod` s; scores the members' mean (module docstring)."""

    name = "meta-ensemble"

    def __init__(self, config: object, members: int = 3,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(config, overrides)
        self.overrides = overrides
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        self.n_members = int(members)
        self.members: list[ImplicitMetaMethod] = []

    def fit(self, split: ColdStartSplit, seed: int, progress=None, on_epoch=None, *, checkpoint=None,
            resume=None) -> None:
        if checkpoint is not None or resume is not None:
            raise ValueError("the ensemble has no checkpoint or resume of its own")
        members = []
        for m in range(self.n_members):
            member = ImplicitMetaMethod(self.config, self.overrides)
            member.fit(split, member_seed_of(seed, m), progress, on_epoch)
            members.append(member)
        self.adopt(members, split, seed)

    def adopt(self, members: list[ImplicitMetaMethod], split: ColdStartSplit, seed: int) -> None:
        """Make fitted ``members`` (member m trained from seed + 1000 m) this ensemble: its content weight is
        chosen for their mean on the both-new validation users. ``metarec train --feedback implicit
        --members M`` builds the model it serves this way."""
        if len(members) != self.n_members:
            raise ValueError(f"expected {self.n_members} members, got {len(members)}")
        self.members = list(members)
        first = self.members[0]
        self.features, self.learner = first.features, first.learner
        seeds = [member_seed_of(seed, m) for m in range(self.n_members)]
        self.history = [{"member": m, "seed": seeds[m], "chosen": member.chosen} for m, member in enumerate(self.members)]
        self.chosen = {"members": self.n_members, "member_seeds": seeds}
        self._choose_content_weight(split, self.config.selection(seed))

    def model_scores(self, tasks: TaskSet) -> np.ndarray:
        if not self.members:
            raise RuntimeError("fit the method before scoring")
        return np.mean([member.model_scores(tasks) for member in self.members], axis=0)
