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

from metarec.baselines import (
    ContentBased, ContentBasedConfig, GlobalMean, ItemMean, ItemMeanConfig, MatrixFactorization,
    MatrixFactorizationConfig, MostPopular, UserItemBias, UserItemBiasConfig,
)
from metarec.eval.benchmark.config import POOL_SCALES, BenchmarkConfig
from metarec.eval.metrics import mae_rmse
from metarec.meta.run import RunConfig
from metarec.tasks import ColdStartSplit
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)


from metarec.eval.benchmark.ensemble_method import EnsembleMethod
from metarec.eval.benchmark.meta_method import MetaMethod
from metarec.eval.benchmark.method import MAX_SCORE_CELLS, Method, catalogue_lookup, selection_score

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

    def scorer(self, variant: str, tasks: TaskSet, catalogue: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        """Scores of task ``t``'s candidates (a subset of ``catalogue``). A model with ``score_catalogue``
        folds every task in at once (one call per block of tasks, not one per user: the per-user calls
        dominated full-catalogue ranking); otherwise each call folds its own task in."""
        model = self.model
        if not hasattr(model, "score_catalogue"):
            return lambda t, cand: model.score_items(tasks.support_of(t), cand, user_idx=int(tasks.user_idx[t]))
        return catalogue_lookup(model.score_catalogue, tasks, np.asarray(catalogue, dtype=np.int64), MAX_SCORE_CELLS)

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
    if name == "maml-ensemble":  # the recipe's meta-learner from several initialisations, predictions averaged
        def member(chosen):
            if chosen is None:
                return MetaMethod("maml", config.run, search=config.search, fixed=config.fixed, **history)
            return MetaMethod("maml", chosen, **history)

        return EnsembleMethod(name, config.ensemble_members, seed, member)
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
