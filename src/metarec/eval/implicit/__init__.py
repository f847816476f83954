"""The implicit-feedback benchmark: top-N ranking of a cold-start user's held-out positives against the
whole catalogue, on the K-curve, with the explicit benchmark's rules (fit on meta-train users, select on
validation users, score test users once; intervals over seeds; paired bootstrap over test users).

``metrics`` ranks a score matrix, ``method`` defines the method interface and the validation score,
``methods`` holds the baselines (tuned through :class:`BaselineMethod`) and the meta-learner by name,
``run`` runs them, ``compare`` pairs them, ``report`` writes the results. A method module imports
``method`` / ``config`` / ``metrics`` only (never ``run`` or this package), which keeps imports acyclic.
"""

from metarec.eval.implicit.config import DEFAULT_METHODS, DEFAULT_SCENARIOS, IMPLICIT_BASELINE_NAMES, ImplicitBenchmarkConfig
from metarec.eval.implicit.method import ImplicitMethod, Selection, validation_score
from metarec.eval.implicit.methods import BaselineMethod, make_method
from metarec.eval.implicit.metrics import Ranking, catalogue_metrics, rank_tasks, scenario_catalogue
from metarec.eval.implicit.report import results_markdown, save
from metarec.eval.implicit.run import ImplicitBenchmarkResult, run_implicit_benchmark

__all__ = [
    "DEFAULT_METHODS", "DEFAULT_SCENARIOS", "IMPLICIT_BASELINE_NAMES", "BaselineMethod", "ImplicitBenchmarkConfig",
    "ImplicitBenchmarkResult", "ImplicitMethod", "Ranking", "Selection", "catalogue_metrics", "make_method", "rank_tasks",
    "results_markdown", "run_implicit_benchmark", "save", "scenario_catalogue", "validation_score",
]
