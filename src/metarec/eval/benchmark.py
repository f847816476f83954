"""The benchmark: every method on the same seeded splits, every scenario, every metric, with intervals.

Rules that make the numbers trustworthy:

* every method is fitted on the meta-train users' ratings only and selected (hyperparameters, early
  stopping) on validation users only; test users are scored once, at the end;
* each seed is a different split *and* a different initialisation; results are mean and 95% CI over
  seeds (t-interval), and the best meta-learner is compared with the best baseline (both chosen on
  validation MAE) by a paired bootstrap over test users. With ``split_seed`` every seed uses that one
  split and varies only the training randomness (initialisation, task order, MF's initial factors), as
  on published split files: the intervals then say how much a method's result depends on its training
  run, not on which users and items happened to be held out;
* ranking is reported both within the 10 query items (comparable with MeLU / TaNP) and against the
  whole catalogue (every item the user has not rated in the support set; in the new-item scenarios every
  new item), with popularity-bias metrics of the top-10 lists;
* ``item_fold_in`` adds the new-item scenarios once more, as ``<scenario>_pooled``: every method that has
  item parameters folds each new item in from the support ratings all of the scenario's test tasks give
  it (never a query rating), with a penalty scale chosen on validation users' new-item tasks. That is the
  transductive setting of a service where new items collect ratings from many users at once; the plain
  scenarios keep the strict one (each task sees its own support set only).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from metarec._atomic import atomic_path, write_json, write_text
from metarec.baselines import (
    ContentBased, ContentBasedConfig, GlobalMean, ItemMean, ItemMeanConfig, MatrixFactorization,
    MatrixFactorizationConfig, MostPopular, UserItemBias, UserItemBiasConfig,
)
from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError, MetarecError
from metarec.eval.metrics import catalogue_ranking_metrics, mae_rmse, query_ranking_metrics
from metarec.meta.engine import MetaLearner
from metarec.meta.global_model import train_global_model
from metarec.meta.item_fold_in import item_prior_variance, new_items_folded_in, supports_item_fold_in
from metarec.meta.run import RunConfig
from metarec.meta.trainer import Trainer, parameters_swapped_in, without_support
from metarec.tasks.splits import (HISTORY_AS_PRIOR, HISTORY_MAX_NEW_SUPPORT, ColdStartSplit, SplitConfig, add_user_history,
                                  make_split)
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)

BASELINES = ("global-mean", "item-mean", "popularity", "bias", "mf", "content")
META = ("maml", "fomaml", "reptile", "metasgd")
DEFAULT_METHODS = (*BASELINES, "global-neural", *META)
RATING_METRICS = ("mae", "rmse")
# multiples of a method's own item penalty tried on validation users for the pooled item fold-in
POOL_SCALES = tuple(2.0**k for k in range(-8, 5))
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. ``run`` is the meta-learners' base configuration (model, meta settings, schedule);
    each meta-learning method replaces only the algorithm. ``user_history``: a test task whose user is a
    meta-train user (warm, new items) adapts on that user's meta-train ratings plus its support set, the
    same knowledge the bias and MF baselines use through their trained user parameters;
    ``history_as_prior``: in a task with new-item support ratings, the history sets the prior the support
    is folded in around (``Context.prior``) instead of joining the support, whose ratings are of another
    kind of item than the history's; ``history_max_new_support`` restricts the history to tasks with fewer
    support ratings *of new items* than it (None: every task gets it; see ``tasks.splits``). Both were
    chosen on validation tasks only (``scripts/validation_sweep.py --heavy-new-items``) and apply to the
    meta-learners' strict scenarios: in the pooled item fold-in, which learns the new items' vectors from
    the users' adapted vectors, every task gets the history in its support, and so does the global model
    fine-tuned per user (validation: both better so than with the K = 10 rule or the history as prior).
    ``item_fold_in``:
    also score the new-item scenarios with new items folded in from all test tasks' support sets (see the
    module docstring), as extra scenarios ``new_items_pooled`` and ``new_users_new_items_pooled``."""

    dataset: str = "ml-100k"
    data_dir: str | None = None
    protocol: str = "melu"
    split_dir: str | None = None
    heavy_users: str | None = None  # None: the run config's split setting
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int | None = None  # None: each seed draws its own split; an int: every seed uses this split
    methods: tuple[str, ...] = DEFAULT_METHODS
    support_sizes: tuple[int, ...] = (1, 3, 5, 10, 20)
    catalogue_k: int = 10
    bootstrap: int = 2000
    user_history: bool = True
    history_max_new_support: int | None = HISTORY_MAX_NEW_SUPPORT  # with user_history: only tasks with fewer new-item support ratings
    history_as_prior: bool = HISTORY_AS_PRIOR  # with user_history: in new-item tasks, the history sets the prior
    item_fold_in: bool = False
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(DEFAULT_METHODS)
        if unknown:
            raise ConfigError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(DEFAULT_METHODS)}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if self.history_max_new_support is not None and self.history_max_new_support < 0:
            raise ConfigError(f"history_max_new_support must be >= 0, got {self.history_max_new_support}")

    @classmethod
    def quick(cls, **overrides) -> "BenchmarkConfig":
        """A small version for CI: two seeds, few epochs, a few methods, two support sizes."""
        run = RunConfig.preset("feature-mlp", "maml").override("train", epochs=2, patience=2)
        base = dict(seeds=(0, 1), methods=("global-mean", "item-mean", "popularity", "bias", "mf", "maml"),
                    support_sizes=(1, 5), bootstrap=200, run=run)
        base.update(overrides)
        return cls(**base)

    def split_config(self, seed: int) -> SplitConfig:
        """The split a seed is scored on: its own, or ``split_seed``'s when that is set."""
        seed = seed if self.split_seed is None else self.split_seed
        return replace(self.run.split, protocol=self.protocol, split_dir=self.split_dir, seed=seed,
                       heavy_users=self.heavy_users or self.run.split.heavy_users)


# ---------------------------------------------------------------------- methods
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
    """A baseline whose hyperparameter (if any) is chosen on validation MAE from a small grid."""

    family = "baseline"

    def __init__(self, name: str, candidates: Sequence[Callable[[], object]]) -> None:
        self.name = name
        self.candidates = candidates
        self.model = None
        self.history = []
        self.pool_scale: float | None = None  # the pooled item fold-in's penalty scale (None: no item side)

    def fit(self, split: ColdStartSplit) -> None:
        best, best_mae = None, math.inf
        val = split.validation.get("new_users")
        for make in self.candidates:
            model = make().fit(split)
            if len(self.candidates) == 1 or val is None or not len(val):
                best = model
                break
            m = mae_rmse(val, model.predict(val))["mae"]
            self.history.append({"candidate": repr(getattr(model, "config", model)), "val_mae": m})
            if m < best_mae:
                best, best_mae = model, m
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
                 history_max_new_support: int | None = None, history_as_prior: bool = False) -> None:
        self.name = name
        self.config = config
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
        if not self.inner_lr_grid:
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


def make_method(name: str, config: BenchmarkConfig, seed: int = 0) -> Method:
    """A fresh, unfitted method by name (baseline grids are chosen on validation users); ``seed`` seeds
    the methods with a random initialisation (the meta-learners' is their run config's)."""
    if name == "global-mean":
        return BaselineMethod(name, [GlobalMean])
    if name == "item-mean":
        return BaselineMethod(name, [lambda d=d: ItemMean(ItemMeanConfig(damping=d)) for d in (1.0, 5.0, 20.0)])
    if name == "popularity":
        return BaselineMethod(name, [MostPopular])
    if name == "bias":
        return BaselineMethod(name, [lambda r=r: UserItemBias(UserItemBiasConfig(reg=r, item_bias_from_attributes=True))
                                     for r in (2.0, 5.0, 15.0)])
    if name == "mf":
        # the strongest baseline gets the widest grid: latent size x regularisation
        return BaselineMethod(name, [lambda f=f, r=r: MatrixFactorization(MatrixFactorizationConfig(factors=f, reg=r, seed=seed))
                                     for f in (10, 20, 40) for r in (5.0, 10.0, 20.0)])
    if name == "content":
        return BaselineMethod(name, [lambda r=r: ContentBased(ContentBasedConfig(reg=r)) for r in (3.0, 10.0, 30.0)])
    if name == "global-neural":
        # the history rule is the meta-learners': fine-tuned per user, the global model does better with the
        # history on every task (validation: the heavy users' new-item tasks, see BenchmarkConfig)
        return MetaMethod(name, config.run, global_model=True, user_history=config.user_history)
    algorithm_config = RunConfig.preset(config.run.model.kind, name).meta
    # Reptile has no query loss: the configured one applies to the other algorithms
    meta = replace(config.run.meta, algorithm=name, **({"query_loss": "squared"} if name == "reptile" else {}))
    grid: tuple[float, ...] = ()
    if name == "reptile":  # Reptile has no query/support split in its inner loop: adapt everything
        meta = replace(meta, adapt=algorithm_config.adapt, inner_steps=max(meta.inner_steps, algorithm_config.inner_steps))
        # every parameter now moves in the inner loop: a head-sized step can diverge (measured: NaN after
        # 3 steps of 0.1 from one rating with neural CF), so the step is chosen on validation users,
        # among those that stay finite from a single rating
        grid = (meta.inner_lr, meta.inner_lr / 10, meta.inner_lr / 100)
    return MetaMethod(name, RunConfig(config.run.data, config.run.split, config.run.model, meta, config.run.train),
                      inner_lr_grid=grid, user_history=config.user_history,
                      history_max_new_support=config.history_max_new_support,
                      history_as_prior=config.history_as_prior)


# ---------------------------------------------------------------------- running
@dataclass
class BenchmarkResult:
    config: BenchmarkConfig
    rows: pd.DataFrame  # seed, scenario, method, metric, value, k
    summary: dict
    comparisons: dict
    histories: dict
    seconds: float


def _scenario_metrics(method: Method, variant: str, tasks: TaskSet, split: ColdStartSplit,
                      popularity: np.ndarray, k: int, catalogue_too: bool) -> dict[str, float]:
    if not len(tasks):
        return {}
    out: dict[str, float] = {}
    if method.rates(variant):
        pred = method.predict(variant, tasks)
        if not np.isfinite(pred).all():  # a diverged adaptation: say where, rather than fail in a metric
            raise MetarecError(f"{variant}: {int((~np.isfinite(pred)).sum())} of {len(pred)} predictions are not "
                               f"finite in {tasks.name} (support sizes {int(tasks.support_sizes.min())}-"
                               f"{int(tasks.support_sizes.max())})")
        out.update({m: v for m, v in mae_rmse(tasks, pred).items() if m in RATING_METRICS})
        out.update(query_ranking_metrics(tasks, pred, ks=(1, 3, 5)))
    else:  # a ranking-only method: within-query ranking from its scores
        scorer = method.scorer(variant, tasks, np.unique(tasks.query_item))
        pred = np.concatenate([scorer(t, tasks.query_of(t)[0]) for t in range(len(tasks))])
        out.update(query_ranking_metrics(tasks, pred, ks=(1, 3, 5)))
    if catalogue_too:
        new = tasks.name.endswith("new_items")
        catalogue = np.flatnonzero(split.new_item_mask if new else np.ones(split.dataset.n_items, bool))
        catalogue = np.intersect1d(catalogue, np.flatnonzero(_rated_items(split.dataset)))
        out.update({f"catalogue_{m}": v for m, v in
                    catalogue_ranking_metrics(method.scorer(variant, tasks, catalogue), tasks, catalogue, popularity, k).items()})
    return out


def _scenarios(split: ColdStartSplit, item_fold_in: bool) -> Iterator[tuple[str, TaskSet, bool]]:
    """(name, tasks, pooled) of every test scenario; with ``item_fold_in``, each new-item scenario once
    more as ``<name>_pooled``."""
    for scenario, tasks in split.test.items():
        yield scenario, tasks, False
        if item_fold_in and scenario.endswith("new_items"):
            yield f"{scenario}_pooled", tasks, True


def _rated_items(dataset: RatingDataset) -> np.ndarray:
    rated = np.zeros(dataset.n_items, bool)
    rated[dataset.ratings["item_idx"].to_numpy()] = True
    return rated


def _per_task_abs_error(method: Method, variant: str, tasks: TaskSet) -> np.ndarray:
    pred = method.predict(variant, tasks)
    err = np.abs(pred - tasks.query_rating)
    return np.add.reduceat(err, tasks.query_ptr[:-1]) / tasks.query_sizes


def run_benchmark(config: BenchmarkConfig, *, dataset: RatingDataset | None = None,
                  progress: Progress | None = None) -> BenchmarkResult:
    """Run every method on every seed; return long-format rows plus the aggregated summary."""
    from metarec.data.loaders.registry import load_dataset

    started = time.perf_counter()
    dataset = dataset or load_dataset(config.dataset, data_dir=config.data_dir)
    rows: list[dict] = []
    histories: dict[str, dict[int, list]] = {}
    errors: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    val_mae: dict[str, list[float]] = {}
    families: dict[str, str] = {}
    split: ColdStartSplit | None = None
    for seed in config.seeds:
        if split is None or config.split_seed is None:  # a fixed split is drawn once
            split = make_split(dataset, config.split_config(seed))
            train = split.train_ratings()
            popularity = np.bincount(train["item_idx"].to_numpy(), minlength=dataset.n_items).astype(np.float64)
        for name in config.methods:
            method = make_method(name, config, seed)
            if isinstance(method, MetaMethod):
                method.config = method.config.override("train", seed=seed)
            if progress:
                progress(f"seed {seed}: {name}")
            t0 = time.perf_counter()
            method.fit(split)
            if config.item_fold_in:
                method.choose_pool_scale(split)
            fit_seconds = time.perf_counter() - t0
            histories.setdefault(name, {})[seed] = method.history
            for variant in method.variants():
                families[variant] = method.family
                rows.append(dict(seed=seed, scenario="_fit", method=variant, metric="seconds", value=fit_seconds, k=0))
                val = split.validation.get("new_users")
                if method.rates(variant) and val is not None and len(val):
                    val_mae.setdefault(variant, []).append(mae_rmse(val, method.predict(variant, val))["mae"])
                for scenario, tasks, pooled in _scenarios(split, config.item_fold_in):
                    with method.pooled(variant, tasks) if pooled else nullcontext():
                        for metric, value in _scenario_metrics(method, variant, tasks, split, popularity,
                                                               config.catalogue_k, True).items():
                            rows.append(dict(seed=seed, scenario=scenario, method=variant, metric=metric, value=value, k=0))
                        if method.rates(variant):
                            errors.setdefault((scenario, variant), {})[seed] = _per_task_abs_error(method, variant, tasks)
                for k in config.support_sizes:
                    fixed = split.with_support_size(k)
                    for scenario, tasks, pooled in _scenarios(fixed, config.item_fold_in):
                        with method.pooled(variant, tasks) if pooled else nullcontext():
                            for metric, value in _scenario_metrics(method, variant, tasks, fixed, popularity,
                                                                   config.catalogue_k, False).items():
                                rows.append(dict(seed=seed, scenario=scenario, method=variant, metric=metric, value=value, k=k))
    frame = pd.DataFrame(rows)
    summary = summarise(frame)
    comparisons = compare_best(errors, val_mae, families, config.bootstrap, seed=0)
    comparisons["interval_separation"] = interval_separation(summary.get("0", {}), comparisons["best_meta_learner"],
                                                             families)
    return BenchmarkResult(config, frame, summary, comparisons, histories, time.perf_counter() - started)


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval (NaN half-width for a single value)."""
    x = np.asarray([v for v in values if v == v], dtype=np.float64)
    if not len(x):
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    from scipy import stats

    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def summarise(frame: pd.DataFrame) -> dict:
    """{k: {scenario: {method: {metric: {mean, ci95, n}}}}} over seeds."""
    out: dict = {}
    for (k, scenario, method, metric), group in frame.groupby(["k", "scenario", "method", "metric"], sort=True):
        mean, half = confidence_interval(group["value"].tolist())
        out.setdefault(str(int(k)), {}).setdefault(scenario, {}).setdefault(method, {})[metric] = {
            "mean": mean, "ci95": half, "n": int(group["value"].notna().sum())}
    return out


def is_baseline(variant: str, families: Mapping[str, str]) -> bool:
    """Baselines are the baseline family plus the neural global model (with and without fine-tuning): the
    meta-learners' architecture trained without meta-learning."""
    return families.get(variant) == "baseline" or variant.startswith("global-neural")


def compare_best(errors: Mapping[tuple[str, str], Mapping[int, np.ndarray]], val_mae: Mapping[str, list[float]],
                 families: Mapping[str, str], draws: int, seed: int = 0) -> dict:
    """Best meta-learner vs best baseline (both chosen on validation MAE): a paired bootstrap over test users
    (seeds pooled), and the per-seed MAE differences with their 95% t-interval (paired by seed: each seed
    is one split, so a split that is hard for both methods does not widen the interval as it widens
    each method's own seed interval)."""
    def best(family: str) -> str | None:
        pool = {m: np.mean(v) for m, v in val_mae.items() if is_baseline(m, families) == (family == "baseline")
                and not m.endswith("-no-adapt")}
        return min(pool, key=pool.get) if pool else None

    meta, base = best("meta"), best("baseline")
    out = {"best_meta_learner": meta, "best_baseline": base, "scenarios": {}}
    if meta is None or base is None:
        return out
    rng = np.random.default_rng(seed)
    scenarios = sorted({s for s, _ in errors})
    for scenario in scenarios:
        a, b = errors.get((scenario, meta), {}), errors.get((scenario, base), {})
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diff = np.concatenate([a[s] - b[s] for s in seeds])  # per user-task, pooled over seeds
        if not len(diff):
            continue
        boots = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(1)
        low, high = np.quantile(boots, [0.025, 0.975])
        per_seed = [float((a[s] - b[s]).mean()) for s in seeds if len(a[s])]
        mean, half = confidence_interval(per_seed)
        out["scenarios"][scenario] = {"mae_difference": float(diff.mean()), "ci95": [float(low), float(high)],
                                      "p_meta_better": float((boots < 0).mean()), "tasks": int(len(diff)),
                                      "seed_differences": per_seed, "seed_ci95": [mean - half, mean + half]}
    return out


def interval_separation(summary: Mapping, meta: str | None, families: Mapping[str, str]) -> dict:
    """{scenario: {baseline: {meta_upper, baseline_lower, separated}}}: whether the best meta-learner's 95%
    seed interval of MAE lies wholly below each baseline's (the neural global model, with and without
    fine-tuning, counts as a baseline). The strict reading of "beats every baseline"; ``separated`` is
    None when there is no interval (one seed)."""
    out: dict = {}
    if meta is None:
        return out
    baselines = [m for m in families if is_baseline(m, families)]
    for scenario, methods in summary.items():
        if scenario.startswith("_") or "mae" not in methods.get(meta, {}):
            continue
        mine = methods[meta]["mae"]
        upper = mine["mean"] + mine["ci95"]
        for base in sorted(baselines):
            cell = methods.get(base, {}).get("mae")
            if cell is None or cell["mean"] != cell["mean"]:
                continue  # popularity ranks only
            lower = cell["mean"] - cell["ci95"]
            separated = None if upper != upper or lower != lower else bool(upper < lower)
            out.setdefault(scenario, {})[base] = {"meta_upper": upper, "baseline_lower": lower, "separated": separated}
    return out


# ---------------------------------------------------------------------- writing
METRIC_ORDER = ("mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@5", "precision@5", "map@5", "catalogue_ndcg@10",
                "catalogue_recall@10", "catalogue_mrr", "catalogue_coverage@10", "catalogue_popularity_percentile@10",
                "catalogue_long_tail@10")


def _fmt(cell: Mapping | None) -> str:
    if not cell or cell["mean"] != cell["mean"]:
        return "-"
    if cell["ci95"] != cell["ci95"]:
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.4f} ± {cell['ci95']:.4f}"


def results_markdown(result: BenchmarkResult) -> str:
    cfg = result.config
    varies = ("every seed: a split and an initialisation" if cfg.split_seed is None else
              f"one split (seed {cfg.split_seed}) for every seed: the seeds vary the training only")
    lines = [f"# Benchmark: {cfg.dataset}, {cfg.protocol} protocol, seeds {', '.join(map(str, cfg.seeds))}", "",
             f"Mean ± 95% CI over seeds (t-interval; {varies}). Lower is better for MAE / RMSE and popularity "
             "percentile; higher for the ranking metrics. Methods selected on validation users only.", ""]
    full = result.summary.get("0", {})
    for scenario in ("warm", "new_users", "new_items", "new_users_new_items", "new_items_pooled",
                     "new_users_new_items_pooled"):
        if scenario not in full:
            continue
        methods = full[scenario]
        metrics = [m for m in METRIC_ORDER if any(m in v for v in methods.values())]
        lines += [f"## {scenario}", "", "| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        order = sorted(methods, key=lambda m: methods[m].get("mae", {}).get("mean", math.inf))
        for method in order:
            lines.append(f"| {method} | " + " | ".join(_fmt(methods[method].get(m)) for m in metrics) + " |")
        lines.append("")
    comp = result.comparisons
    if comp.get("scenarios"):
        lines += ["## Best meta-learner vs best baseline (paired bootstrap over test users)", "",
                  f"Chosen on validation MAE: meta-learner **{comp['best_meta_learner']}**, baseline **{comp['best_baseline']}**.", "",
                  "| scenario | MAE difference (meta - baseline) | 95% CI | P(meta better) | tasks | per seed | 95% CI over seeds (paired) |",
                  "|---|---|---|---|---|---|---|"]
        for scenario, c in comp["scenarios"].items():
            per_seed = " / ".join(f"{d:+.4f}" for d in c.get("seed_differences", []))
            low, high = c.get("seed_ci95", [float("nan")] * 2)
            seed_ci = f"[{low:+.4f}, {high:+.4f}]" if low == low else "-"
            lines.append(f"| {scenario} | {c['mae_difference']:+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | "
                         f"{c['p_meta_better']:.3f} | {c['tasks']} | {per_seed} | {seed_ci} |")
        lines.append("")
    separation = comp.get("interval_separation") or {}
    if separation:
        lines += [f"## {comp['best_meta_learner']}'s MAE interval against each baseline's (95% over seeds)", "",
                  "Separated: the meta-learner's upper end lies below the baseline's lower end. Over seeds that "
                  "draw different splits these intervals mostly measure the splits; the paired tests above are "
                  "the tests of a difference.", "",
                  "| scenario | meta-learner's upper end | separated from | overlapping (baseline's lower end) |",
                  "|---|---|---|---|"]
        for scenario, bases in separation.items():
            upper = next(iter(bases.values()))["meta_upper"]
            apart = ", ".join(b for b, c in bases.items() if c["separated"]) or "-"
            overlap = ", ".join(f"{b} ({c['baseline_lower']:.4f})" for b, c in bases.items() if c["separated"] is False) or "-"
            lines.append(f"| {scenario} | {upper:.4f} | {apart} | {overlap} |")
        lines.append("")
    scales = chosen_pool_scales(result.histories)
    if cfg.item_fold_in and scales:
        lines += ["## Pooled item fold-in: penalty scale chosen on validation users, per seed", "",
                  "A multiple of each method's own item penalty; 1 where the split has no validation tasks on "
                  "new items.", "", "| method | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " |",
                  "|---" * (len(cfg.seeds) + 1) + "|"]
        for method, per_seed in scales.items():
            lines.append(f"| {method} | " + " | ".join(f"{per_seed.get(s, 1.0):g}" for s in cfg.seeds) + " |")
        lines.append("")
    lines.append(f"Total time {result.seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def chosen_pool_scales(histories: Mapping[str, Mapping[int, list[dict]]]) -> dict[str, dict[int, float]]:
    """{method: {seed: scale}}: the pooled item fold-in's scale each method chose on validation users
    (the candidate of lowest validation MAE recorded in its history)."""
    out: dict[str, dict[int, float]] = {}
    for method, per_seed in histories.items():
        for seed, rows in per_seed.items():
            tried = [r for r in rows if "pool_candidate" in r]
            if tried:
                out.setdefault(method, {})[seed] = min(tried, key=lambda r: r["val_new_items_mae"])["pool_candidate"]
    return out


def plot_results(result: BenchmarkResult, out: Path) -> list[Path]:
    """PNG plots: each metric against support size K per method and scenario; learning curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    frame = result.rows[result.rows["k"] > 0]
    for metric in sorted(frame["metric"].unique()):
        sub = frame[frame["metric"] == metric]
        scenarios = sorted(sub["scenario"].unique())
        fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.6), squeeze=False)
        for ax, scenario in zip(axes[0], scenarios):
            cell = sub[sub["scenario"] == scenario].groupby(["method", "k"])["value"].mean().reset_index()
            for method, g in cell.groupby("method"):
                ax.plot(g["k"], g["value"], marker="o", label=method)
            ax.set_xscale("log")
            ax.set_xticks(sorted(cell["k"].unique()), labels=[str(k) for k in sorted(cell["k"].unique())])
            ax.set_title(scenario)
            ax.set_xlabel("support size K")
            ax.set_ylabel(metric)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"k_curve_{metric.replace('@', '_at_')}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    curves = {m: h for m, h in result.histories.items() if any("epoch" in r for v in h.values() for r in v)}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, by_seed in curves.items():
            for seed, hist in by_seed.items():
                pts = [(r["epoch"], r["val_mae"]) for r in hist if "epoch" in r]
                if pts:
                    ax.plot(*zip(*pts), label=f"{method} (seed {seed})", alpha=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation MAE")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "learning_curves.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    return written


def _jsonable(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value if isinstance(value, (int, float, str, bool, type(None), list, dict)) else repr(value)


def write_results(result: BenchmarkResult, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp:
        result.rows.to_csv(tmp, index=False)
    cfg = asdict(result.config)
    cfg["run"] = result.config.run.to_dict()
    histories = {m: {str(seed): [{k: _jsonable(v) for k, v in r.items()} for r in h] for seed, h in by_seed.items()}
                 for m, by_seed in result.histories.items()}  # learning curves, baselines' validation grids
    write_json(out / "results.json", {"config": cfg, "summary": result.summary, "comparisons": result.comparisons,
                                      "histories": histories, "seconds": result.seconds})
    write_text(out / "results.md", results_markdown(result))
    plots = plot_results(result, out)
    return {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md", "plots": plots}
