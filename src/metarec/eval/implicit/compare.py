"""Paired comparisons of the implicit benchmark: a method minus each scenario's best baseline, per test task.

The bootstrap is :func:`metarec.eval.benchmark.stats.paired_difference` (over tasks, seeds pooled, plus the
per-seed t-interval), called as baseline minus method because it is written for an error (lower is
better) and the ranking metrics are higher-is-better; the signs are turned back here.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from metarec.eval.benchmark.stats import paired_difference

PerTask = Mapping[tuple[str, int, str, str], Mapping[int, np.ndarray]]  # (scenario, K, method, metric) -> seed -> values


def paired_gain(method: Mapping[int, np.ndarray], baseline: Mapping[int, np.ndarray], draws: int,
                rng: np.random.Generator) -> dict | None:
    """``method - baseline`` of a higher-is-better per-task metric, paired by task (both arrays of a
    seed hold the same tasks in the same order; tasks NaN in either are left out): the mean difference,
    its bootstrap 95% interval over tasks (seeds pooled), whether it excludes 0, P(method better) under
    the bootstrap, and the per-seed differences with their t-interval. None without a common task."""
    seeds = sorted(set(method) & set(baseline))
    a, b = {}, {}
    for s in seeds:
        x, y = np.asarray(method[s], np.float64), np.asarray(baseline[s], np.float64)
        if x.shape != y.shape:
            raise ValueError(f"seed {s}: {len(x)} tasks against {len(y)}; pairs need the same tasks")
        ok = ~np.isnan(x) & ~np.isnan(y)
        if ok.any():
            a[s], b[s] = x[ok], y[ok]
    cell = paired_difference(b, a, draws, rng)
    if cell is None:
        return None
    low, high = (-cell["ci95"][1], -cell["ci95"][0])
    s_low, s_high = (-cell["seed_ci95"][1], -cell["seed_ci95"][0])
    return {"difference": -cell["mae_difference"], "ci95": [low, high], "excludes_zero": bool(low > 0 or high < 0),
            "p_better": cell["p_meta_better"], "tasks": cell["tasks"],
            "seed_differences": [-d for d in cell["seed_differences"]],
            "seed_ci95": [s_low, s_high] if s_low == s_low else [math.nan, math.nan]}


def best_baseline(val_scores: Mapping[str, Sequence[float]], baselines: Sequence[str]) -> str | None:
    """The baseline with the highest mean validation score over seeds (NaN scores left out)."""
    pool = {m: float(np.mean([v for v in val_scores.get(m, []) if v == v])) for m in baselines
            if any(v == v for v in val_scores.get(m, []))}
    return max(pool, key=lambda m: (pool[m], -baselines.index(m))) if pool else None


def compare(per_task: PerTask, val_scores: Mapping[str, Sequence[float]], methods: Sequence[str],
            baselines: Sequence[str], scenarios: Sequence[str], support_sizes: Sequence[int],
            metrics: Sequence[str], draws: int, seed: int = 0,
            scenario_val_scores: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> dict:
    """``{"best_baseline", "best_baselines", "validation", "pairs": {method: {scenario: {K: {metric:
    paired_gain}}}}}`` with K "all" (the whole support) and each support size; each compared method
    against the best baseline of each scenario: the best on that scenario's validation users
    (``scenario_val_scores``: scenario -> method -> score per seed), else on ``val_scores`` (the
    selection scenario's), which also gives ``best_baseline``."""
    best = best_baseline(val_scores, list(baselines))
    per_scenario = {s: best_baseline((scenario_val_scores or {}).get(s, val_scores), list(baselines)) for s in scenarios}
    out: dict = {"best_baseline": best, "best_baselines": per_scenario, "compared": list(methods),
                 "validation": {m: float(np.nanmean(v)) if any(x == x for x in v) else math.nan
                                for m, v in val_scores.items()},
                 "scenario_validation": {s: {m: float(np.nanmean(v)) if any(x == x for x in v) else math.nan
                                             for m, v in by_method.items()}
                                         for s, by_method in (scenario_val_scores or {}).items()},
                 "pairs": {}}
    rng = np.random.default_rng(seed)
    for method in out["compared"]:
        for scenario in scenarios:
            base = per_scenario[scenario]
            if base is None or base == method:
                continue
            for k in (0, *support_sizes):
                for metric in metrics:
                    cell = paired_gain(per_task.get((scenario, k, method, metric), {}),
                                       per_task.get((scenario, k, base, metric), {}), draws, rng)
                    if cell is not None:
                        (out["pairs"].setdefault(method, {}).setdefault(scenario, {})
                         .setdefault(str(k) if k else "all", {}))[metric] = cell
    return out
