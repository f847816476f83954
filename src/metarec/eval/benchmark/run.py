"""Running a benchmark: every method on the same seeded splits, every scenario, the K-curve, every metric.

Rules that make the numbers trustworthy:

* every method is fitted on the meta-train users' ratings only and selected (hyperparameters, early
  stopping, the meta-learner's recipe) on validation users only; test users are scored once, at the end;
* each seed is a different split *and* a different initialisation; results are mean and 95% CI over
  seeds (t-interval). With ``split_seed`` every seed uses that one split and varies only the training;
* the K-curve cuts every test task to K support ratings (``support_draws`` seeded choices per task,
  averaged), so a point of the curve is what a newcomer with K ratings gets; the best meta-learner is
  compared with the best baseline and with each of ``curve_baselines``, paired by task (a bootstrap over
  tasks, seeds pooled) and by seed;
* ranking is reported both within the query (comparable with MeLU / TaNP) and against the whole
  catalogue (every item the user has not rated in the support set; in the new-item scenarios every new
  item), with popularity-bias metrics of the top-10 lists, at the whole support and at small K;
* ``item_fold_in`` adds the new-item scenarios once more, as ``<scenario>_pooled``: every method that has
  item parameters folds each new item in from the support ratings all of the scenario's test tasks give
  it (never a query rating), with a penalty scale chosen on validation users' new-item tasks.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.errors import MetarecError
from metarec.eval.benchmark.config import CURVE_SCENARIOS, RATING_METRICS, BenchmarkConfig, Progress
from metarec.eval.benchmark.journal import BenchmarkJournal, journaled, number
from metarec.eval.benchmark.meta_method import MetaMethod
from metarec.eval.benchmark.method import Method, selection_score
from metarec.eval.benchmark.methods import make_method
from metarec.eval.benchmark.stats import (best_variants, compare_best, compare_curve, interval_separation,
                                          summarise)
from metarec.eval.metrics import catalogue_ranking_metrics, mae_rmse, query_ranking_metrics
from metarec.tasks import ColdStartSplit, make_split
from metarec.tasks.taskset import TaskSet

log = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    config: BenchmarkConfig
    rows: pd.DataFrame  # seed, scenario, method, metric, value, k (0: the whole support)
    summary: dict
    comparisons: dict
    histories: dict
    seconds: float


def _scenario_metrics(method: Method, variant: str, tasks: TaskSet, split: ColdStartSplit,
                      popularity: np.ndarray, k: int, catalogue_too: bool) -> tuple[dict[str, float], np.ndarray | None]:
    """The scenario's metrics, and each task's MAE (None for a ranking-only method)."""
    if not len(tasks):
        return {}, None
    out: dict[str, float] = {}
    per_task = None
    if method.rates(variant):
        pred = method.predict(variant, tasks)
        if not np.isfinite(pred).all():  # a diverged adaptation: say where, rather than fail in a metric
            raise MetarecError(f"{variant}: {int((~np.isfinite(pred)).sum())} of {len(pred)} predictions are not "
                               f"finite in {tasks.name} (support sizes {int(tasks.support_sizes.min())}-"
                               f"{int(tasks.support_sizes.max())})")
        out.update({m: v for m, v in mae_rmse(tasks, pred).items() if m in RATING_METRICS})
        out.update(query_ranking_metrics(tasks, pred, ks=(1, 3, 5)))
        per_task = np.add.reduceat(np.abs(pred - tasks.query_rating), tasks.query_ptr[:-1]) / tasks.query_sizes
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
    return out, per_task


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
                  progress: Progress | None = None, journal: BenchmarkJournal | None = None) -> BenchmarkResult:
    """Run every method on every seed; return long-format rows plus the aggregated summary. ``journal``:
    each finished (seed, method) unit is recorded there, and a unit it already records is loaded instead
    of fitted again (:mod:`metarec.eval.benchmark.journal`: a killed benchmark resumes)."""
    from metarec.data.loaders.registry import load_data, load_dataset

    started = time.perf_counter()
    if dataset is None:
        dataset = load_data(config.data) if config.data is not None else load_dataset(config.dataset, data_dir=config.data_dir)
    rows: list[dict] = []
    histories: dict[str, dict[int, list]] = {}
    errors: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    val_score: dict[str, list[float]] = {}
    families: dict[str, str] = {}
    split: ColdStartSplit | None = None
    steps = 2 * len(config.seeds) * len(config.methods)
    for i_seed, seed in enumerate(config.seeds):
        if split is None or config.split_seed is None:  # a fixed split is drawn once
            split = make_split(dataset, config.split_config(seed))
            train = split.train_ratings()
            popularity = np.bincount(train["item_idx"].to_numpy(), minlength=dataset.n_items).astype(np.float64)
        for i_method, name in enumerate(config.methods):
            step = 2 * (i_seed * len(config.methods) + i_method)  # each method: fitting, then scoring
            where = f"seed {seed} ({i_seed + 1}/{len(config.seeds)}): {name} ({i_method + 1}/{len(config.methods)})"
            unit = journaled(journal, seed, name,
                             lambda: _run_unit(name, config, seed, split, popularity, where, step, steps, progress),
                             lambda: progress(f"{where}, done before the resume", step + 1, steps) if progress else None)
            histories.setdefault(name, {})[seed] = unit["history"]
            families.update(unit["families"])
            for variant, score in unit["val_score"].items():
                val_score.setdefault(variant, []).append(number(score))
            rows.extend(dict(row, value=number(row["value"])) for row in unit["rows"])
            for scenario, variant, values in unit["errors"]:
                errors.setdefault((scenario, variant), {})[seed] = np.asarray(values, dtype=np.float64)
    if progress:
        progress("comparing the methods", steps, steps)
    frame = pd.DataFrame(rows)
    summary = summarise(frame)
    comparisons = compare_best(errors, val_score, families, config.bootstrap, seed=0)
    meta, _ = best_variants(val_score, families)
    comparisons["interval_separation"] = interval_separation(summary.get("0", {}), meta, families)
    comparisons["curve"] = compare_curve(errors, meta, [b for b in config.curve_baselines if b in families],
                                         CURVE_SCENARIOS, config.support_sizes, config.bootstrap, seed=0)
    return BenchmarkResult(config, frame, summary, comparisons, histories, time.perf_counter() - started)


def _run_unit(name: str, config: BenchmarkConfig, seed: int, split: ColdStartSplit, popularity: np.ndarray,
              where: str, step: int, steps: int, progress: Progress | None) -> dict:
    """Fit method ``name`` on ``seed``'s split and score every variant: what it adds to the results (its
    rows, its per-task errors as ``[scenario, variant, values]``, each variant's validation score and
    family, and the method's history), as one unit a journal can keep."""
    sizes = config.selection_sizes()
    method = make_method(name, config, seed)
    if isinstance(method, MetaMethod):
        method.config = method.config.override("train", seed=seed)
    if progress:
        progress(f"{where}, fitting", step, steps)
    t0 = time.perf_counter()
    method.fit(split)
    if config.item_fold_in:
        method.choose_pool_scale(split)
    fit_seconds = time.perf_counter() - t0
    if progress:
        progress(f"{where}, scoring (fitted in {fit_seconds:.0f} s)", step + 1, steps)
    rows: list[dict] = []
    errors: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    val_score: dict[str, float] = {}
    families: dict[str, str] = {}
    for variant in method.variants():
        families[variant] = method.family
        rows.append(dict(seed=seed, scenario="_fit", method=variant, metric="seconds", value=fit_seconds, k=0))
        if method.rates(variant) and any(len(v) for v in split.validation.values()):
            score = selection_score(lambda t, v=variant: method.predict(v, t), split, sizes)
            val_score[variant] = score
            rows.append(dict(seed=seed, scenario="_validation", method=variant, metric="score", value=score, k=0))
        for scenario, tasks, pooled in _scenarios(split, config.item_fold_in):
            with method.pooled(variant, tasks) if pooled else nullcontext():
                metrics, per_task = _scenario_metrics(method, variant, tasks, split, popularity,
                                                      config.catalogue_k, True)
            rows.extend(dict(seed=seed, scenario=scenario, method=variant, metric=m, value=v, k=0)
                        for m, v in metrics.items())
            if per_task is not None:
                errors.setdefault((scenario, variant), {})[seed] = per_task
        _curve(method, variant, split, popularity, config, seed, rows, errors)
    return {"rows": rows, "errors": [[scenario, variant, by_seed[seed]] for (scenario, variant), by_seed in errors.items()],
            "val_score": val_score, "families": families, "history": method.history}


def _curve(method: Method, variant: str, split: ColdStartSplit, popularity: np.ndarray, config: BenchmarkConfig,
           seed: int, rows: list[dict], errors: dict) -> None:
    """The K-curve of one variant: each K's metrics averaged over the support draws (one row per seed),
    each task's error averaged over them (the paired tests' unit); full-catalogue ranking on draw 0 at
    the K in ``catalogue_support_sizes``, for the curve's scenarios."""
    for k in config.support_sizes:
        sums: dict[tuple[str, str], list[float]] = {}
        per_task: dict[str, list[np.ndarray]] = {}
        for draw in range(config.support_draws):
            cut = split.with_support_size(k, draw)
            for scenario, tasks, pooled in _scenarios(cut, config.item_fold_in):
                catalogue = (draw == 0 and k in config.catalogue_support_sizes
                             and scenario in CURVE_SCENARIOS)
                with method.pooled(variant, tasks) if pooled else nullcontext():
                    metrics, task_mae = _scenario_metrics(method, variant, tasks, cut, popularity,
                                                          config.catalogue_k, catalogue)
                for metric, value in metrics.items():
                    sums.setdefault((scenario, metric), []).append(value)
                if task_mae is not None:
                    per_task.setdefault(scenario, []).append(task_mae)
        rows.extend(dict(seed=seed, scenario=scenario, method=variant, metric=metric, value=float(np.mean(values)), k=k)
                    for (scenario, metric), values in sums.items())
        for scenario, draws in per_task.items():
            errors.setdefault((f"{scenario}@{k}", variant), {})[seed] = np.mean(draws, axis=0)
