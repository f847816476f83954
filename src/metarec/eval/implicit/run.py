"""Running the implicit-feedback benchmark: every method on the same seeded splits, full-catalogue top-N
metrics on the K-curve, intervals over seeds and paired comparisons with the best baseline.

The explicit benchmark's rules (:mod:`metarec.eval.benchmark.run`), kept:

* every method is fitted on the meta-train users' positives only - ``fit`` is handed the split *without
  its test tasks*, so test users cannot reach it - and selected on validation users only, all methods
  on one score (:class:`~metarec.eval.implicit.method.Selection`); test users are scored once, after;
* each seed is a different split and a different initialisation; results are mean and 95% CI over
  seeds; the comparisons are paired by test task (a bootstrap over tasks, seeds pooled, seeded);
* the K-curve cuts every test task to K support positives (``split.with_support_size``; tasks with fewer
  are left out), so a point of the curve is what a newcomer with K interactions gets;
* ranking is against the scenario's whole catalogue (:mod:`metarec.eval.implicit.metrics`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError
from metarec.eval.benchmark.journal import BenchmarkJournal, journaled, number
from metarec.eval.benchmark.stats import summarise
from metarec.eval.implicit.compare import compare
from metarec.eval.implicit.config import ImplicitBenchmarkConfig, Progress
from metarec.eval.implicit.method import ImplicitMethod, validation_score
from metarec.eval.implicit.methods import KNOWN_METHODS, make_method, training_interactions
from metarec.eval.implicit.metrics import Ranking, catalogue_metrics, rank_tasks, scenario_catalogue
from metarec.tasks import make_split
from metarec.tasks.taskset import TaskSet

__all__ = ["ImplicitBenchmarkConfig", "ImplicitBenchmarkResult", "MethodFactory", "run_implicit_benchmark"]

log = logging.getLogger(__name__)

MethodFactory = Callable[[ImplicitBenchmarkConfig], ImplicitMethod]
SCORE_CELLS = 20_000_000  # tasks x items scored per call of a method's score (80 MB of float32)


@dataclass
class ImplicitBenchmarkResult:
    """``rows``: seed, scenario, method, k_support (0 = the whole support), metric, value - one row per seed
    and metric (the mean over its tasks); ``_validation`` rows hold each method's selection score and its
    points, ``_fit`` rows the fitting seconds. ``per_task``: (scenario, K, method, metric) -> seed -> each
    test task's value (the comparisons' unit). ``summary``: {K: {scenario: {method: {metric: {mean, ci95,
    n, low, high}}}}} over seeds. ``choices``: method -> seed -> its chosen settings and validation history."""

    config: ImplicitBenchmarkConfig
    dataset: str
    rows: pd.DataFrame
    per_task: dict
    summary: dict
    comparisons: dict
    choices: dict
    seconds: float


def run_implicit_benchmark(dataset: RatingDataset, config: ImplicitBenchmarkConfig, progress: Progress | None = None,
                           *, factories: Mapping[str, MethodFactory] | None = None,
                           journal: BenchmarkJournal | None = None) -> ImplicitBenchmarkResult:
    """Run every method of ``config`` on every seed of ``dataset`` (positives, e.g. from
    ``load_dataset(name, feedback="implicit")``). ``factories`` adds or replaces methods by name (a
    method built from the config; the defaults come from :func:`~metarec.eval.implicit.methods.make_method`).
    ``journal``: each finished (seed, method) unit is recorded there, and a unit it already records is
    loaded instead of fitted again (:mod:`metarec.eval.benchmark.journal`: a killed benchmark resumes)."""
    started = time.perf_counter()
    if dataset.meta.get("feedback") != "implicit":
        raise ConfigError(f"{dataset.name} holds explicit ratings; load it with feedback='implicit' "
                          "(load_dataset(name, feedback='implicit')) for the implicit benchmark")
    factories = dict(factories or {})
    unknown = [m for m in config.methods if m not in factories and m not in KNOWN_METHODS]
    if unknown:
        raise ConfigError(f"unknown implicit method(s) {unknown}; known: {', '.join([*KNOWN_METHODS, *factories])}")
    rows: list[dict] = []
    per_task: dict = {}
    val_scores: dict[str, list[float]] = {}
    scenario_scores: dict[str, dict[str, list[float]]] = {}  # the baselines' validation score in each scenario
    choices: dict[str, dict[int, dict]] = {}
    steps = 2 * len(config.seeds) * len(config.methods)
    for i_seed, seed in enumerate(config.seeds):
        split = make_split(dataset, config.split_config(seed))
        # what fit may see: meta-train and validation tasks; the test tasks are not in it at all
        fit_split = replace(split, test={}, _cache={})
        _, train_item, _ = training_interactions(split)
        popularity = np.bincount(train_item, minlength=dataset.n_items).astype(np.float64)
        cuts = {0: [split], **{k: [split.with_support_size(k, d) for d in range(config.support_draws)]
                               for k in config.support_sizes}}
        log.info("seed %d: %d meta-train tasks, test tasks %s", seed, len(split.meta_train),
                 {s: len(split.test[s]) for s in config.scenarios if s in split.test})
        for i_method, name in enumerate(config.methods):
            step = 2 * (i_seed * len(config.methods) + i_method)
            where = f"seed {seed} ({i_seed + 1}/{len(config.seeds)}): {name} ({i_method + 1}/{len(config.methods)})"

            def compute() -> dict:
                method = factories[name](config) if name in factories else make_method(name, config)
                return _run_unit(method, name, config, seed, split, fit_split, popularity, cuts,
                                 lambda msg, done: progress(f"{where}, {msg}", step + done, steps) if progress else None)

            unit = journaled(journal, seed, name, compute,
                             lambda: progress(f"{where}, done before the resume", step + 1, steps) if progress else None)
            val_scores.setdefault(name, []).append(number(unit["validation"]))
            for scenario in config.scenarios if name in config.baselines() else ():
                # a unit journaled before per-scenario scores: its one score
                value = unit.get("scenario_validation", {}).get(scenario, unit["validation"])
                scenario_scores.setdefault(scenario, {}).setdefault(name, []).append(number(value))
            choices.setdefault(name, {})[seed] = unit["choice"]
            rows.extend(dict(row, value=number(row["value"])) for row in unit["rows"])
            for scenario, k, metric, values in unit["per_task"]:
                per_task.setdefault((scenario, int(k), name, metric), {})[seed] = np.asarray(values, dtype=np.float64)
    if progress:
        progress("comparing the methods", steps, steps)
    frame = pd.DataFrame(rows, columns=["seed", "scenario", "method", "k_support", "metric", "value"])
    summary = summarise(frame.rename(columns={"k_support": "k"}))
    compared = [m for m in config.compare if m in config.methods]
    comparisons = compare(per_task, val_scores, compared, config.baselines(), config.scenarios, config.support_sizes,
                          config.compare_metrics, config.bootstrap, seed=0, scenario_val_scores=scenario_scores)
    return ImplicitBenchmarkResult(config, dataset.name, frame, per_task, summary, comparisons, choices,
                                   time.perf_counter() - started)


def _run_unit(method: ImplicitMethod, name: str, config: ImplicitBenchmarkConfig, seed: int, split, fit_split,
              popularity: np.ndarray, cuts: Mapping[int, list], report: Callable[[str, int], None]) -> dict:
    """Fit ``method`` on ``seed``'s split (without its test tasks) and score it on every scenario and K: what
    it adds to the results (rows, per-task values as ``[scenario, K, metric, values]``, its validation score
    and its choices), as one unit a journal can keep."""
    report("fitting", 0)
    t0 = time.perf_counter()
    method.fit(fit_split, seed)
    fit_seconds = time.perf_counter() - t0
    score, points = validation_score(method.score, fit_split, config.selection(seed))
    rows = [_row(seed, "_fit", name, 0, "seconds", fit_seconds), _row(seed, "_validation", name, 0, "selection", score)]
    rows.extend(_row(seed, "_validation", name, 0 if p == "all" else int(p[1:]), config.selection_metric, v)
                for p, v in points.items())
    report(f"scoring (fitted in {fit_seconds:.0f} s)", 1)
    per_task: list[list] = []
    for scenario in config.scenarios:
        catalogue = scenario_catalogue(split, scenario)
        for k, draws in cuts.items():
            tasks = [cut.test.get(scenario) for cut in draws]
            if tasks[0] is None or not len(tasks[0]):
                continue
            rankings = [rank_scores(method.score, t, catalogue, config.ks) for t in tasks]
            for metric in rankings[0].per_task:
                values = mean_over_draws([r.per_task[metric] for r in rankings])
                per_task.append([scenario, k, metric, values])
                rows.append(_row(seed, scenario, name, k, metric, _nanmean(values)))
            for metric, value in catalogue_metrics(rankings[0], catalogue, popularity, config.ks).items():
                rows.append(_row(seed, scenario, name, k, metric, value))
            scored = int((~np.isnan(rankings[0].per_task["mrr"])).sum())
            rows.append(_row(seed, scenario, name, k, "tasks", float(scored)))
    choice = {"chosen": getattr(method, "chosen", None), "validation": score, "history": getattr(method, "history", None)}
    by_scenario = scenario_validation(method, name, config, seed, fit_split, score)
    rows.extend(_row(seed, "_validation", name, 0, f"selection:{s}", v) for s, v in by_scenario.items())
    return {"rows": rows, "per_task": per_task, "validation": score, "scenario_validation": by_scenario, "choice": choice}


def scenario_validation(method: ImplicitMethod, name: str, config: ImplicitBenchmarkConfig, seed: int, fit_split,
                        score: float) -> dict[str, float]:
    """A baseline's validation score in each compared scenario (the selection on that scenario's validation
    users; ``score`` for the selection scenario itself): the best baseline of a scenario is chosen on it, so
    new items are not compared with a baseline chosen on new users (iALS cannot rank new items). Empty for
    the compared methods (meta-learners), which need no such choice."""
    if name not in config.baselines():
        return {}
    out = {config.selection_scenario: score}
    for scenario in config.scenarios:
        if scenario not in out and len(fit_split.validation.get(scenario, ())):
            out[scenario] = validation_score(method.score, fit_split,
                                             replace(config.selection(seed), scenario=scenario))[0]
    return out


def rank_scores(score: Callable[[TaskSet], np.ndarray], tasks: TaskSet, candidates: np.ndarray,
                ks: tuple[int, ...]) -> Ranking:
    """:func:`~metarec.eval.implicit.metrics.rank_tasks` of a scorer's scores, asked for in chunks of
    tasks so a large catalogue never needs one ``[all tasks, items]`` matrix."""
    step = max(1, SCORE_CELLS // max(len(candidates), 1))
    if len(tasks) <= step:
        return rank_tasks(_checked(score(tasks), tasks, candidates), tasks, candidates, ks)
    parts = []
    for start in range(0, len(tasks), step):
        chunk = tasks.subset(np.arange(start, min(start + step, len(tasks))))
        parts.append(rank_tasks(_checked(score(chunk), chunk, candidates), chunk, candidates, ks))
    per_task = {m: np.concatenate([p.per_task[m] for p in parts]) for m in parts[0].per_task}
    return Ranking(per_task, [t for p in parts for t in p.top])


def _checked(scores: np.ndarray, tasks: TaskSet, candidates: np.ndarray) -> np.ndarray:
    shape = tuple(getattr(scores, "shape", ()))
    if shape != (len(tasks), len(candidates)):
        raise ConfigError(f"a method scored {shape} for {len(tasks)} tasks of {tasks.name}; expected "
                          f"({len(tasks)}, {len(candidates)}): one row per task, one column per item")
    return scores


def mean_over_draws(draws: list[np.ndarray]) -> np.ndarray:
    """Each task's metric averaged over the support draws (the same tasks in each; NaN stays NaN)."""
    if len(draws) == 1:
        return draws[0]
    stacked = np.vstack(draws)
    out = np.full(stacked.shape[1], np.nan)
    ok = ~np.isnan(stacked).all(0)
    out[ok] = np.nanmean(stacked[:, ok], axis=0)
    return out


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def _row(seed: int, scenario: str, method: str, k: int, metric: str, value: float) -> dict:
    return dict(seed=seed, scenario=scenario, method=method, k_support=int(k), metric=metric, value=float(value))
