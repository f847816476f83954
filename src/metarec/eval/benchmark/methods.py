"""The methods a benchmark compares: baselines (a grid chosen on validation users) and meta-learners.

Every method is fitted on the meta-train users' ratings only and selected on validation users only, on
one validation score (:func:`selection_score`): with the ``k-curve`` selection, the mean validation MAE at
K = 1, 3, 5, 10 support ratings and the whole support - the same score the meta-learner's early stopping
and automatic recipe use, so every method is tuned for newcomers as much as for long histories.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from metarec.baselines import (
    ContentBased, ContentBasedConfig, GlobalMean, ItemMean, ItemMeanConfig, MatrixFactorization,
    MatrixFactorizationConfig, MostPopular, UserItemBias, UserItemBiasConfig,
)
from metarec.eval.benchmark.config import GRADIENT_STEP_META, POOL_SCALES, BenchmarkConfig
from metarec.eval.metrics import mae_rmse
from metarec.meta.engine import MetaLearner
from metarec.meta.global_model import train_global_model
from metarec.meta.item_fold_in import item_prior_variance, new_items_folded_in, supports_item_fold_in
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer, parameters_swapped_in, without_support
from metarec.tasks.selection import validation_score
from metarec.tasks.splits import ColdStartSplit, add_user_history
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)


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


class BaselineMethod(Method):
    """A baseline whose hyperparameters (if any) are chosen on the validation score from a small grid."""

    family = "baseline"

    def __init__(self, name: str, candidates: Sequence[Callable[[], object]],
                 refine: Callable[[object], Sequence[Callable[[], object]]] | None = None,
                 selection_sizes: Sequence[int] | None = ()) -> None:
        """``refine``: given the best candidate's config, more candidates around it (a second, greedy
        stage of the grid); ``selection_sizes``: the K of the validation score (None: the whole-support
        MAE of validation new users only)."""
        self.name = name
        self.candidates = candidates
        self.refine = refine
        self.selection_sizes = None if selection_sizes is None else tuple(selection_sizes)
        self.model = None
        self.history = []
        self.pool_scale: float | None = None  # the pooled item fold-in's penalty scale (None: no item side)

    def _score(self, model, split: ColdStartSplit) -> float:
        if self.selection_sizes is None:
            val = split.validation.get("new_users")
            return mae_rmse(val, model.predict(val))["mae"] if val is not None and len(val) else math.nan
        return selection_score(model.predict, split, self.selection_sizes)

    def fit(self, split: ColdStartSplit) -> None:
        has_validation = any(len(v) for v in split.validation.values())
        best, best_score = None, math.inf

        def consider(makers: Sequence[Callable[[], object]]) -> None:
            nonlocal best, best_score
            for make in makers:
                model = make().fit(split)
                if best is None and (len(self.candidates) == 1 and self.refine is None or not has_validation):
                    best = model
                    return
                score = self._score(model, split)
                self.history.append({"candidate": repr(getattr(model, "config", model)), "val_score": score})
                if score < best_score or best is None:
                    best, best_score = model, score

        consider(self.candidates)
        if self.refine is not None and has_validation and best is not None:
            consider(self.refine(best.config))
        self.model = best

    def predict(self, variant: str, tasks: TaskSet) -> np.ndarray:
        return self.model.predict(tasks)

    def scorer(self, variant, tasks, catalogue):
        return lambda t, cand: self.model.score_items(tasks.support_of(t), cand, user_idx=int(tasks.user_idx[t]))

    def rates(self, variant: str) -> bool:
        return self.name != "popularity"

    def choose_pool_scale(self, split: ColdStartSplit) -> None:
        if not hasattr(self.model, "with_new_items"):
            return
        self.pool_scale = self._choose_scale(split, self.name, POOL_SCALES,
                                             lambda scale: setattr(self, "pool_scale", scale))

    @contextmanager
    def pooled(self, variant: str, tasks: TaskSet) -> Iterator[None]:
        if self.pool_scale is None:
            yield
            return
        model, self.model = self.model, self.model.with_new_items(tasks, self.pool_scale)
        try:
            yield
        finally:
            self.model = model


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
        scores = self.catalogue_scores(variant, tasks, catalogue)
        position = np.full(int(catalogue.max()) + 1, -1, np.int64)
        position[catalogue] = np.arange(len(catalogue))
        return lambda t, cand: scores[t, position[cand]]

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


def gradient_step_config(config: BenchmarkConfig) -> RunConfig:
    """The gradient-step meta-learners' configuration (``presets/maml-gd.toml``: MeLU-style MLP over the
    user's and item's attribute embeddings, 3 inner gradient steps on the head), on the benchmark's data
    and split settings."""
    from metarec.meta.recipe import preset

    gd = preset("maml-gd")
    return RunConfig(config.run.data, config.run.split, gd.model, gd.meta, replace(gd.train, seed=config.run.train.seed))


def make_method(name: str, config: BenchmarkConfig, seed: int = 0) -> Method:
    """A fresh, unfitted method by name (baseline grids are chosen on validation users); ``seed`` seeds
    the methods with a random initialisation (the meta-learners' is their run config's)."""
    sizes = config.selection_sizes() if config.selection == "k-curve" else None
    if name == "global-mean":
        return BaselineMethod(name, [GlobalMean])
    if name == "item-mean":
        return BaselineMethod(name, [lambda d=d: ItemMean(ItemMeanConfig(damping=d)) for d in (1.0, 5.0, 20.0)],
                              selection_sizes=sizes)
    if name == "popularity":
        return BaselineMethod(name, [MostPopular])
    if name == "bias":
        # up to 50 pseudo-ratings: with one rating the best fold-in may barely move a newcomer's bias
        return BaselineMethod(name, [lambda r=r: UserItemBias(UserItemBiasConfig(reg=r, item_bias_from_attributes=True))
                                     for r in (2.0, 5.0, 15.0, 50.0)], selection_sizes=sizes)
    if name == "mf":
        # the strongest baseline gets the widest grid: latent size x regularisation, then the bias penalty
        # around the best (the bias moves most from a newcomer's first ratings)
        def refine(best: MatrixFactorizationConfig):
            return [lambda b=b: MatrixFactorization(replace(best, bias_reg=b)) for b in (10.0, 30.0) if b != best.bias_reg]

        return BaselineMethod(name, [lambda f=f, r=r: MatrixFactorization(MatrixFactorizationConfig(factors=f, reg=r, seed=seed))
                                     for f in (10, 20, 40) for r in (5.0, 10.0, 20.0)],
                              refine=refine, selection_sizes=sizes)
    if name == "content":
        return BaselineMethod(name, [lambda r=r: ContentBased(ContentBasedConfig(reg=r)) for r in (3.0, 10.0, 30.0)],
                              selection_sizes=sizes)
    history = dict(user_history=config.user_history, history_max_new_support=config.history_max_new_support,
                   history_as_prior=config.history_as_prior)
    if name == "global-neural":
        # the history rule is the meta-learners': fine-tuned per user, the global model does better with the
        # history on every task (validation: the heavy users' new-item tasks, see BenchmarkConfig)
        return MetaMethod(name, config.run, global_model=True, user_history=config.user_history)
    if name == "maml":  # the recipe: its dataset-dependent settings chosen on validation users
        return MetaMethod(name, config.run, search=config.search, fixed=config.fixed, **history)
    base = gradient_step_config(config)
    meta = replace(base.meta, algorithm="maml" if name == "maml-gd" else name,
                   **({"query_loss": "squared"} if name == "reptile" else {}))
    grid: tuple[float, ...] = ()
    if name == "reptile":  # Reptile has no query/support split in its inner loop: adapt everything
        meta = replace(meta, adapt="all")
        # every parameter now moves in the inner loop: a head-sized step can diverge (measured: NaN after
        # 3 steps of 0.1 from one rating with neural CF), so the step is chosen on validation users,
        # among those that stay finite from a single rating
        grid = (meta.inner_lr, meta.inner_lr / 10, meta.inner_lr / 100)
    return MetaMethod(name, RunConfig(base.data, base.split, base.model, meta, base.train), inner_lr_grid=grid, **history)
