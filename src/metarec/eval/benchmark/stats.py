"""Intervals and paired tests over a benchmark's per-task errors (one paired bootstrap for all of them)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd


MIN_INTERVAL_SEEDS = 3  # below this a t-interval is no interval: with 2 seeds t(0.975, 1) = 12.7 times the spread


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval; NaN half-width for fewer than ``MIN_INTERVAL_SEEDS``
    values, where the interval would be meaningless (``± 150.97`` from two seeds): report the range then."""
    x = np.asarray([v for v in values if v == v], dtype=np.float64)
    if not len(x):
        return float("nan"), float("nan")
    if len(x) < MIN_INTERVAL_SEEDS:
        return float(x.mean()), float("nan")
    from scipy import stats

    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def summarise(frame: pd.DataFrame) -> dict:
    """{k: {scenario: {method: {metric: {mean, ci95, n, low, high}}}}} over seeds (low / high: the range,
    what is shown where there are too few seeds for an interval)."""
    out: dict = {}
    for (k, scenario, method, metric), group in frame.groupby(["k", "scenario", "method", "metric"], sort=True):
        values = group["value"].dropna()
        mean, half = confidence_interval(values.tolist())
        low, high = (float(values.min()), float(values.max())) if len(values) else (float("nan"), float("nan"))
        out.setdefault(str(int(k)), {}).setdefault(scenario, {}).setdefault(method, {})[metric] = {
            "mean": mean, "ci95": half, "n": int(len(values)), "low": low, "high": high}
    return out


def is_baseline(variant: str, families: Mapping[str, str]) -> bool:
    """Baselines are the baseline family plus the neural global model (with and without fine-tuning): the
    meta-learners' architecture trained without meta-learning."""
    return families.get(variant) == "baseline" or variant.startswith("global-neural")


def paired_difference(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray], draws: int,
                      rng: np.random.Generator) -> dict | None:
    """Method A's per-task errors minus method B's, paired by task, over the seeds both have: the mean
    difference, a bootstrap 95% interval over tasks (seeds pooled), P(A better) under the bootstrap, and
    the per-seed mean differences with their 95% t-interval (paired by seed: each seed is one split, so a
    split that is hard for both does not widen it as it widens each method's own seed interval)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diff = np.concatenate([a[s] - b[s] for s in seeds])  # per user-task, pooled over seeds
    if not len(diff):
        return None
    boots = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(1)
    low, high = np.quantile(boots, [0.025, 0.975])
    per_seed = [float((a[s] - b[s]).mean()) for s in seeds if len(a[s])]
    mean, half = confidence_interval(per_seed)
    return {"mae_difference": float(diff.mean()), "ci95": [float(low), float(high)],
            "p_meta_better": float((boots < 0).mean()), "tasks": int(len(diff)),
            "seed_differences": per_seed, "seed_ci95": [mean - half, mean + half]}


def best_variants(val_score: Mapping[str, list[float]], families: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(best meta-learner, best baseline), each chosen on its mean validation score over seeds; the
    unadapted variants are not candidates."""
    def best(baseline: bool) -> str | None:
        pool = {m: np.mean(v) for m, v in val_score.items() if is_baseline(m, families) == baseline
                and not m.endswith("-no-adapt")}
        return min(pool, key=pool.get) if pool else None

    return best(False), best(True)


def compare_best(errors: Mapping[tuple[str, str], Mapping[int, np.ndarray]], val_mae: Mapping[str, list[float]],
                 families: Mapping[str, str], draws: int, seed: int = 0) -> dict:
    """Best meta-learner vs best baseline (both chosen on their validation score) in every scenario of
    ``errors`` (a K-curve point is the scenario ``name@K``): :func:`paired_difference` of each."""
    meta, base = best_variants(val_mae, families)
    out = {"best_meta_learner": meta, "best_baseline": base, "scenarios": {}}
    if meta is None or base is None:
        return out
    rng = np.random.default_rng(seed)
    for scenario in sorted({s for s, _ in errors}):
        cell = paired_difference(errors.get((scenario, meta), {}), errors.get((scenario, base), {}), draws, rng)
        if cell is not None:
            out["scenarios"][scenario] = cell
    return out


def compare_curve(errors: Mapping[tuple[str, str], Mapping[int, np.ndarray]], meta: str | None,
                  baselines: Sequence[str], scenarios: Sequence[str], support_sizes: Sequence[int], draws: int,
                  seed: int = 0) -> dict:
    """{scenario: {K: {baseline: paired_difference}}}: the best meta-learner against each named baseline at
    every point of the K-curve (K = "all": the whole support), paired by task."""
    out: dict = {}
    if meta is None:
        return out
    rng = np.random.default_rng(seed)
    for scenario in scenarios:
        for k in [*support_sizes, "all"]:
            key = scenario if k == "all" else f"{scenario}@{k}"
            for base in baselines:
                cell = paired_difference(errors.get((key, meta), {}), errors.get((key, base), {}), draws, rng)
                if cell is not None:
                    out.setdefault(scenario, {}).setdefault(str(k), {})[base] = cell
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


