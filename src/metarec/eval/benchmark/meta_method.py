"""The benchmark's meta-learners (and the global neural model): trained by the recipe or a preset, each
variant with and without per-user adaptation, selected on validation users."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from metarec.eval.benchmark.config import POOL_SCALES
from metarec.meta.learner import MetaLearner
from metarec.meta.global_model import train_global_model
from metarec.meta.item_fold_in import item_prior_variance, new_items_folded_in, supports_item_fold_in
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer, parameters_swapped_in, without_support
from metarec.tasks import ColdStartSplit, add_user_history
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

from metarec.eval.benchmark.method import Method, catalogue_lookup

class MetaMethod(Method):
    """A meta-learner (or the global neural model); variants with and without per-user adaptation."""

    family = "meta"

    def __init__(self, name: str, config: RunConfig, *, global_model: bool = False,
                 inner_lr_grid: Sequence[float] = (), user_history: bool = True,
                 history_max_new_support: int | None = None, history_as_prior: bool = False,
                 search: bool = False, fixed: Sequence[str] = ()) -> None:
        self.name = name
        self.config = config
        # search: the automatic recipe (metarec.meta.recipe) picks the dataset-dependent settings on the
        # split's validation users, except those in ``fixed``; ``recipe`` records the trials
        self.search = search
        self.fixed = tuple(fixed)
        self.recipe: dict | None = None
        self.global_model = global_model
        self.inner_lr_grid = tuple(inner_lr_grid)  # chosen on validation users when given
        self.user_history = user_history  # see BenchmarkConfig
        self.history_max_new_support = history_max_new_support  # see BenchmarkConfig
        self.history_as_prior = history_as_prior  # see BenchmarkConfig
        self.learner: MetaLearner | None = None
        self.known: TaskSet | None = None  # the meta-train tasks: what is known about meta-train users
        self._last_history: tuple[TaskSet, tuple, TaskSet] | None = None  # (tasks, rule, with their history)
        # the rule within pooled(): every task, in its support (see BenchmarkConfig)
        self.pooled_history_max_new_support: int | None = None
        self.pooled_history_as_prior = False
        self._pooling = False
        self.history = []
        self.known_items: np.ndarray | None = None  # items with training ratings
        self.pool_penalty: np.ndarray | None = None  # the pooled item fold-in's ridge penalty (None: none)
        # the global model's unadapted variant: its own epoch, chosen on its own validation MAE
        self.unadapted_params: dict[str, torch.Tensor] | None = None

    def _train(self, config: RunConfig, split: ColdStartSplit):
        if self.global_model:
            return train_global_model(config, split)
        trainer = Trainer(config, split=split)
        trainer.fit()
        return trainer

    def fit(self, split: ColdStartSplit) -> None:
        grid: list[dict] = []  # the inner-lr candidates, when there is a grid
        if self.search:
            from metarec.meta.recipe import choose_recipe

            chosen = choose_recipe(split, self.config, fixed=self.fixed)
            trainer, self.config, self.recipe = chosen.trainer, chosen.config, chosen.to_dict()
            grid = [{"recipe_trial": i, **t.to_dict()} for i, t in enumerate(chosen.trials)]
            # the history's penalty multiple: chosen after training (or the configured one where no heavy
            # user's new-item ratings exist, as under published splits)
            grid.append({"history_penalty_scale": chosen.config.model.history_penalty_scale,
                         "history_scales": self.recipe["history_scales"]})
        elif not self.inner_lr_grid:
            trainer = self._train(self.config, split)
        else:
            trainer, best = None, math.inf
            for lr in self.inner_lr_grid:
                candidate = self._train(self.config.override("meta", inner_lr=lr), split)
                val = candidate.state["best_val_mae"]
                # a step that diverges from a single rating is no candidate, whatever it does with more
                diverges = not self._stable_with_one_rating(candidate.restore_best(), split)
                if diverges:
                    log.warning("%s: inner_lr %g diverges on validation users with one rating; not chosen", self.name, lr)
                grid.append({"candidate": f"inner_lr={lr:g}", "val_mae": val, "diverges_with_one_rating": diverges})
                log.info("%s: inner_lr %g, validation MAE %.4f", self.name, lr, val)
                val = math.inf if diverges else val
                if trainer is None or val < best:
                    trainer, best = candidate, val
            self.config = trainer.config
        # The selected (best validation) parameters, not the last ones.
        self.learner = trainer.restore_best()
        self.unadapted_params = getattr(trainer, "best_unadapted_params", None) if self.global_model else None
        self.known = split.meta_train
        self.history = [*grid, *trainer.history]
        self.known_items = split.known_items()

    def adapting_variant(self) -> str:
        """The variant that adapts per user (the meta-learner itself, or the global model fine-tuned)."""
        return f"{self.name}-ft" if self.global_model else self.name

    def choose_pool_scale(self, split: ColdStartSplit) -> None:
        """Penalty ``scale * sigma^2 / s_j^2`` (see :mod:`metarec.meta.item_fold_in`): ``s_j^2`` from the
        trained item vectors, ``sigma^2`` the validation new users' query MSE, ``scale`` chosen on
        validation users' new-item tasks."""
        if not supports_item_fold_in(self.learner):
            return
        variant = self.adapting_variant()
        val = split.validation.get("new_users")
        sigma2 = 1.0
        if val is not None and len(val):
            sigma2 = float(np.mean((self.predict(variant, val) - val.query_rating) ** 2))
        base = sigma2 / item_prior_variance(self.learner)
        self.history.append({"pool_sigma2": sigma2, "pool_prior_variance": (sigma2 / base).tolist()})
        scale = self._choose_scale(split, variant, POOL_SCALES,
                                   lambda c: setattr(self, "pool_penalty", base * c))
        self.pool_penalty = base * scale

    @contextmanager
    def pooled(self, variant: str, tasks: TaskSet) -> Iterator[None]:
        if self.pool_penalty is None or self._steps(variant) == 0:  # an unadapted variant uses no support
            yield
            return
        self._pooling = True
        try:
            with new_items_folded_in(self.learner, self._tasks(variant, tasks), self.known_items, self.pool_penalty,
                                     self._steps(variant)):
                yield
        finally:
            self._pooling = False

    @staticmethod
    def _stable_with_one_rating(learner: MetaLearner, split: ColdStartSplit) -> bool:
        """Finite predictions for every validation user adapted on one support rating."""
        return all(np.isfinite(learner.predict_tasks(tasks, None, 512)).all()
                   for tasks in split.with_support_size(1).validation.values())

    def variants(self) -> list[str]:
        if self.global_model:
            return [self.name, f"{self.name}-ft"]
        return [self.name, f"{self.name}-no-adapt"]

    def _steps(self, variant: str) -> int | None:
        if self.global_model:
            return None if variant.endswith("-ft") else 0
        return 0 if variant.endswith("-no-adapt") else None

    def _tasks(self, variant: str, tasks: TaskSet) -> TaskSet:
        if self._steps(variant) == 0:
            return without_support(tasks, self.learner)
        if not self.user_history or self.known is None:
            return tasks
        # a scenario's tasks are predicted, scored against the catalogue and bootstrapped in turn: build
        # (and pack) their history once, not once per call
        rule = ((self.pooled_history_max_new_support, self.pooled_history_as_prior) if self._pooling
                else (self.history_max_new_support, self.history_as_prior))
        if self._last_history is None or self._last_history[0] is not tasks or self._last_history[1] != rule:
            self._last_history = (tasks, rule, add_user_history(tasks, self.known, self.known_items, *rule))
        return self._last_history[2]

    @contextmanager
    def _parameters(self, variant: str) -> Iterator[None]:
        """Within the block the learner holds the variant's selected parameters: the global model
        without fine-tuning has its own epoch (see ``train_global_model``); every other variant uses
        the learner's as they are."""
        own_epoch = self.unadapted_params if self._steps(variant) == 0 else None
        with parameters_swapped_in(self.learner, own_epoch):
            yield

    def predict(self, variant: str, tasks: TaskSet) -> np.ndarray:
        with self._parameters(variant):
            return self.learner.predict_tasks(self._tasks(variant, tasks), self._steps(variant), 512)

    def scorer(self, variant, tasks, catalogue):
        return catalogue_lookup(lambda t, c: self.catalogue_scores(variant, t, c), tasks, catalogue)

    def catalogue_scores(self, variant: str, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        """Scores [tasks, catalogue] after adapting every task (batched, no per-user loop)."""
        with self._parameters(variant):
            return self._catalogue_scores(variant, tasks, catalogue)

    def _catalogue_scores(self, variant: str, tasks: TaskSet, catalogue: np.ndarray) -> np.ndarray:
        device = next(self.learner.model.parameters()).device
        items = torch.as_tensor(catalogue, dtype=torch.long, device=device)
        vec = self.learner.catalogue_vectors(items)
        out = []
        packed = self._tasks(variant, tasks).packed()
        for start in range(0, len(tasks), 128):
            batch = packed.select(torch.arange(start, min(start + 128, len(tasks)))).to(device)
            adapted, task = self.learner.adapt(batch, self._steps(variant))
            out.append(self.learner.predict_items(adapted, task, items, vec).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(catalogue)))
