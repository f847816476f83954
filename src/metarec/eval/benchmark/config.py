"""What a benchmark runs: datasets, protocol, seeds, methods, the K-curve and how methods are selected."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal

from metarec.errors import ConfigError
from metarec.meta.run import MAX_MEMBERS, DataConfig, RunConfig
from metarec.tasks import HISTORY_AS_PRIOR, HISTORY_MAX_NEW_SUPPORT, SplitConfig

BASELINES = ("global-mean", "item-mean", "popularity", "bias", "mf", "content")
# "maml": the recipe's meta-learner (a closed-form inner loop); the others take gradient steps in the
# inner loop, as the seed describes (presets/maml-gd.toml)
META = ("maml", "maml-gd", "fomaml", "reptile", "metasgd")
GRADIENT_STEP_META = ("maml-gd", "fomaml", "reptile", "metasgd")
DEFAULT_METHODS = (*BASELINES, "global-neural", *META)
# run only when named: the recipe's meta-learner from ``ensemble_members`` initialisations (M times the training)
EXTRA_METHODS = ("maml-ensemble",)
# the scenarios whose K-curve is the headline: a newcomer with K ratings, on old items and on new ones
CURVE_SCENARIOS = ("new_users", "new_users_new_items")
RATING_METRICS = ("mae", "rmse")
# multiples of a method's own item penalty tried on validation users for the pooled item fold-in
POOL_SCALES = tuple(2.0**k for k in range(-8, 5))
Progress = Callable[[str, int, int], None]  # (what runs now, steps done, steps in all)


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run. ``run`` is the meta-learner's base configuration; with ``search`` the automatic
    recipe (:mod:`metarec.meta.recipe`) chooses its dataset-dependent settings on each seed's validation
    users, except those named in ``fixed``.

    The K-curve: every validation and test task cut to K support ratings for each K in
    ``support_sizes`` (tasks with fewer are left out), ``support_draws`` seeded choices of which K per
    task, a task's error averaged over its draws; full-catalogue ranking is scored at the K in
    ``catalogue_support_sizes`` too. ``selection``: the validation score every method is selected on
    (a baseline's grid, a meta-learner's epoch and recipe) - ``k-curve`` the mean validation MAE at
    K = 1, 3, 5, 10 and the whole support, ``all`` the whole-support MAE of new users.
    ``curve_baselines`` are the baselines the best meta-learner is compared with, paired, at every K.

    ``user_history``: a test task whose user is a meta-train user (warm, new items) adapts on that user's
    meta-train ratings plus its support set, the same knowledge the bias and MF baselines use through
    their trained user parameters; ``history_as_prior``: in a task with new-item support ratings, the
    history sets the prior the support is folded in around; ``history_max_new_support`` restricts the
    history to tasks with fewer support ratings *of new items* than it (None: every task gets it; see
    ``tasks.history``). ``item_fold_in``: also score the new-item scenarios with new items folded in from
    all test tasks' support sets, as extra scenarios ``new_items_pooled`` and ``new_users_new_items_pooled``."""

    dataset: str = "ml-100k"
    data_dir: str | None = None
    protocol: str = "melu"
    split_dir: str | None = None
    heavy_users: str | None = None  # None: the run config's split setting
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int | None = None  # None: each seed draws its own split; an int: every seed uses this split
    methods: tuple[str, ...] = DEFAULT_METHODS
    support_sizes: tuple[int, ...] = (1, 3, 5, 10, 20)
    support_draws: int = 3
    catalogue_support_sizes: tuple[int, ...] = (1, 3, 5)
    catalogue_k: int = 10
    bootstrap: int = 2000
    selection: Literal["k-curve", "all"] = "k-curve"
    curve_baselines: tuple[str, ...] = ("bias", "mf")
    user_history: bool = True
    history_max_new_support: int | None = HISTORY_MAX_NEW_SUPPORT
    history_as_prior: bool = HISTORY_AS_PRIOR
    item_fold_in: bool = False
    search: bool = True
    fixed: tuple[str, ...] = ()
    ensemble_members: int = 3  # ``maml-ensemble``'s initialisations
    run: RunConfig = field(default_factory=lambda: _recipe_base())
    data: DataConfig | None = None  # your own table (mapping, attribute tables, kinds); None: ``dataset``

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(DEFAULT_METHODS) - set(EXTRA_METHODS)
        if unknown:
            raise ConfigError(f"unknown method(s) {sorted(unknown)}; known: "
                              f"{', '.join((*DEFAULT_METHODS, *EXTRA_METHODS))}")
        if not 2 <= self.ensemble_members <= MAX_MEMBERS:
            raise ConfigError(f"ensemble_members must be in 2..{MAX_MEMBERS}, got {self.ensemble_members}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if self.history_max_new_support is not None and self.history_max_new_support < 0:
            raise ConfigError(f"history_max_new_support must be >= 0, got {self.history_max_new_support}")
        if self.support_draws < 1:
            raise ConfigError(f"support_draws must be >= 1, got {self.support_draws}")
        if self.selection not in ("k-curve", "all"):
            raise ConfigError(f"selection must be 'k-curve' or 'all', got {self.selection!r}")
        if any(k < 1 for k in (*self.support_sizes, *self.catalogue_support_sizes)):
            raise ConfigError("support sizes must be >= 1")

    @classmethod
    def quick(cls, **overrides) -> "BenchmarkConfig":
        """A small version for CI: two seeds, few epochs, a few methods, two support sizes, no search."""
        run = _recipe_base().override("train", epochs=2, patience=2)
        base = dict(seeds=(0, 1), methods=("global-mean", "item-mean", "popularity", "bias", "mf", "maml"),
                    support_sizes=(1, 5), support_draws=1, catalogue_support_sizes=(1,), bootstrap=200, run=run,
                    search=False)
        base.update(overrides)
        return cls(**base)

    def split_config(self, seed: int) -> SplitConfig:
        """The split a seed is scored on: its own, or ``split_seed``'s when that is set."""
        seed = seed if self.split_seed is None else self.split_seed
        return replace(self.run.split, protocol=self.protocol, split_dir=self.split_dir, seed=seed,
                       heavy_users=self.heavy_users or self.run.split.heavy_users)

    def selection_sizes(self) -> tuple[int, ...]:
        """The K (besides the whole support) a method's validation score averages over."""
        return self.run.train.selection_support_sizes if self.selection == "k-curve" else ()


FOLD_IN_LABEL = "meta-learned fold-in (closed-form inner loop)"


def closed_form(run: RunConfig) -> bool:
    """A meta-learner that takes no gradient step per user: its inner loop is the ridge fold-in's solve."""
    return run.meta.inner_steps == 0 and run.model.fold_in


def method_label(method: str, run: RunConfig | None = None) -> str:
    """What a method (variant) key is, for people. ``maml`` with a closed-form inner loop (0 gradient steps,
    the ridge fold-in) is not MAML: it is named for what it is, with the key kept in brackets, since the key
    is what configs, --methods and results.csv use."""
    base, adapted = (method[:-len("-no-adapt")], False) if method.endswith("-no-adapt") else (method, True)
    if base != "maml" or run is None or not closed_form(run):
        return method
    return f"{FOLD_IN_LABEL if adapted else 'meta-learned prior, no fold-in'} [{method}]"


def _recipe_base() -> RunConfig:
    from metarec.meta.recipe import recipe_base

    return recipe_base()
