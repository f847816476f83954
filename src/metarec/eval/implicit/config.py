"""What the implicit-feedback benchmark runs: seeds, scenarios, the K-curve, methods, selection, comparisons."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

from metarec.errors import ConfigError
from metarec.eval.implicit.method import Selection
from metarec.eval.implicit.metrics import KS
from metarec.meta.run import MAX_MEMBERS
from metarec.tasks import SCENARIOS, SplitConfig

IMPLICIT_BASELINE_NAMES = ("popularity", "item-knn", "ease", "ials", "content")
DEFAULT_METHODS = (*IMPLICIT_BASELINE_NAMES, "meta")
DEFAULT_SCENARIOS = ("new_users", "new_users_new_items")
Progress = Callable[[str, int, int], None]  # (what runs now, steps done, steps in all)


@dataclass(frozen=True)
class ImplicitBenchmarkConfig:
    """What to run.

    Every seed draws its own split (``split`` with that seed: by default the explicit recipe's split -
    heavy users' positives feed training as chunks, at least 150 validation users) and its own
    initialisation. Test tasks are scored with their whole support (K = 0 in the rows) and cut to each
    K of ``support_sizes`` (tasks with fewer support positives left out; ``support_draws`` seeded
    choices of which K, a task's metric averaged over them). Every method is selected on
    :class:`~metarec.eval.implicit.method.Selection`: ``selection_metric`` on the validation tasks of
    ``selection_scenario`` at the whole support and at each K of ``selection_sizes`` (at most
    ``max_validation_tasks`` users). Each method of ``compare`` is compared with the best baseline (the
    best validation score among the other methods), paired by test task on ``compare_metrics``.
    ``grids``: a baseline's hyperparameter grid in place of its default one (name -> list of kwargs)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    support_sizes: tuple[int, ...] = (1, 3, 5, 10, 20)
    # 3, as the explicit benchmark: on Last.fm's validation users half the variance of a user's nDCG@20
    # difference at K = 1-5 is which K positives were drawn; 3 draws narrow the K = 5 interval by a quarter
    support_draws: int = 3
    methods: tuple[str, ...] = DEFAULT_METHODS
    ks: tuple[int, ...] = KS
    selection_metric: str = "ndcg@20"
    selection_scenario: str = "new_users"
    selection_sizes: tuple[int, ...] = (1, 3, 5)
    max_validation_tasks: int | None = 2000
    compare: tuple[str, ...] = ("meta", "meta-ensemble")  # those run; meta-ensemble runs only when named
    ensemble_members: int = 3  # ``meta-ensemble``'s initialisations
    compare_metrics: tuple[str, ...] = ("recall@20", "ndcg@20")
    bootstrap: int = 2000
    split: SplitConfig = field(default_factory=lambda: _recipe_split())
    grids: Mapping[str, Sequence[Mapping[str, object]]] | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if not self.methods:
            raise ConfigError("at least one method is needed")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods named twice: {list(self.methods)}")
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown or not self.scenarios:
            raise ConfigError(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
        if any(k < 1 for k in (*self.support_sizes, *self.ks)):
            raise ConfigError("support sizes and ks must be >= 1")
        if self.support_draws < 1:
            raise ConfigError(f"support_draws must be >= 1, got {self.support_draws}")
        if self.bootstrap < 1:
            raise ConfigError(f"bootstrap must be >= 1, got {self.bootstrap}")
        if not 2 <= self.ensemble_members <= MAX_MEMBERS:
            raise ConfigError(f"ensemble_members must be in 2..{MAX_MEMBERS}, got {self.ensemble_members}")
        self.selection()  # checks the selection metric and sizes
        for metric in self.compare_metrics:
            name, _, k = metric.partition("@")
            if metric != "mrr" and (name not in ("recall", "ndcg", "hit") or not k.isdigit() or int(k) not in self.ks):
                raise ConfigError(f"compare metric {metric!r}: expected recall@k, ndcg@k, hit@k (k in {self.ks}) or mrr")

    @classmethod
    def quick(cls, **overrides) -> "ImplicitBenchmarkConfig":
        """A small version for CI: two seeds, K = 1 and 5, few bootstrap draws, 500 validation users."""
        base = dict(seeds=(0, 1), support_sizes=(1, 5), support_draws=1, bootstrap=200, max_validation_tasks=500)
        base.update(overrides)
        return cls(**base)

    def split_config(self, seed: int) -> SplitConfig:
        return replace(self.split, seed=seed)

    def selection(self, seed: int = 0) -> Selection:
        """The validation score of ``seed``'s split: what the runner reports and every method (the
        baselines' grids, the meta-learner's epochs) is selected on - call it with the seed to get the
        same validation users (and the same cached tasks) as the runner."""
        return Selection(metric=self.selection_metric, scenario=self.selection_scenario,
                         support_sizes=self.selection_sizes, max_tasks=self.max_validation_tasks, seed=seed)

    def baselines(self) -> tuple[str, ...]:
        """The methods the best baseline is chosen among: every method not compared with it."""
        return tuple(m for m in self.methods if m not in self.compare)


def _recipe_split() -> SplitConfig:
    from metarec.meta.recipe import recipe_base

    return recipe_base().split
