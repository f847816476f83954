"""The benchmark: every method on the same seeded splits, every scenario, the K-curve first, with intervals.

``config`` says what runs, ``methods`` holds the baselines and meta-learners (each selected on validation
users only), ``run`` runs them, ``stats`` holds the intervals and paired tests, ``report`` writes the
results. See :mod:`metarec.eval.benchmark.run` for the rules that make the numbers trustworthy.
"""

from metarec.eval.benchmark.config import (BASELINES, CURVE_SCENARIOS, DEFAULT_METHODS, GRADIENT_STEP_META, META,
                                           FOLD_IN_LABEL, POOL_SCALES, RATING_METRICS, BenchmarkConfig,
                                           method_label)
from metarec.eval.benchmark.meta_method import MetaMethod
from metarec.eval.benchmark.method import Method, selection_score
from metarec.eval.benchmark.methods import BaselineMethod, gradient_step_config, make_method
from metarec.eval.benchmark.journal import BenchmarkJournal
from metarec.eval.benchmark.report import (chosen_pool_scales, config_dict, plot_results, recipes_chosen,
                                           results_markdown, write_results)
from metarec.eval.benchmark.run import BenchmarkResult, run_benchmark
from metarec.eval.benchmark.stats import (best_variants, compare_best, compare_curve, confidence_interval,
                                          interval_separation, is_baseline, paired_difference, summarise)

__all__ = [
    "BASELINES", "CURVE_SCENARIOS", "DEFAULT_METHODS", "FOLD_IN_LABEL", "GRADIENT_STEP_META", "META", "POOL_SCALES", "RATING_METRICS",
    "BaselineMethod", "BenchmarkConfig", "BenchmarkJournal", "BenchmarkResult", "MetaMethod", "Method", "best_variants",
    "chosen_pool_scales", "compare_best", "compare_curve", "confidence_interval", "config_dict", "gradient_step_config",
    "interval_separation", "is_baseline", "make_method", "method_label", "paired_difference", "plot_results", "recipes_chosen",
    "results_markdown", "run_benchmark", "selection_score", "summarise", "write_results",
]
