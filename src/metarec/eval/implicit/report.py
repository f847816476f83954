"""Writing the implicit benchmark: results.csv / .json / .md, the K-curve first."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from metarec._io import atomic_path, write_json, write_text
from metarec.eval.benchmark.stats import MIN_INTERVAL_SEEDS
from metarec.eval.implicit.run import ImplicitBenchmarkResult

SCENARIO_TITLES = {"new_users": "new users", "new_users_new_items": "new users on new items (both new)",
                   "warm": "warm users", "new_items": "new items"}
SMALL_K = (1, 3, 5)  # where the table of the other metrics looks: a newcomer's first few interactions


def results_markdown(result: ImplicitBenchmarkResult) -> str:
    """results.md: per scenario the K-curve of recall and nDCG, the paired comparisons with the best
    baseline, then MRR, hit rate, coverage and long-tail share at small K; then what was chosen."""
    cfg = result.config
    comp = result.comparisons
    lines = [f"# Implicit-feedback benchmark: {result.dataset}, seeds {', '.join(map(str, cfg.seeds))}", "",
             "Full-catalogue top-N ranking of each test user's held-out positives: candidates are every item of the "
             "scenario's catalogue (the new items in a new-item scenario) except the user's support items; recall@k = "
             "hits / relevant items. Mean ± 95% CI half-width over seeds (t-interval; each seed a split and an "
             f"initialisation; with fewer than {MIN_INTERVAL_SEEDS} seeds the range over seeds instead). K = the "
             "support positives a test user gives (\"all\": the whole support; users with fewer left out). Every "
             f"method selected on validation users only, on {cfg.selection_metric} (new users, K = "
             f"{', '.join(map(str, cfg.selection_sizes))} and all). Each scenario's methods are compared with its best "
             f"baseline, chosen on that scenario's validation users: {_best_baselines(comp, cfg.scenarios)}.",
             ""]
    curve = _curve_metrics(cfg.compare_metrics, cfg.ks)
    columns = [*cfg.support_sizes, 0]
    for scenario in cfg.scenarios:
        if not any(scenario in result.summary.get(str(k), {}) for k in columns):
            continue
        lines += [f"## {SCENARIO_TITLES.get(scenario, scenario)}", ""]
        order = _order(result, scenario, curve[-1])
        for metric in curve:
            lines += [f"### {metric} against K", "", "| method | " + " | ".join(f"K={_k(k)}" for k in columns) + " |",
                      "|---" * (len(columns) + 1) + "|"]
            for m in order:
                lines.append(f"| {m} | " + " | ".join(_fmt(_cell(result, k, scenario, m, metric)) for k in columns) + " |")
            tasks = [_fmt(_cell(result, k, scenario, order[0], "tasks"), digits=0) if order else "-" for k in columns]
            lines += ["| (test users with a relevant item, mean per seed) | " + " | ".join(tasks) + " |", ""]
        lines += _comparison_table(result, scenario, columns)
        lines += _small_k_table(result, scenario, order)
    lines += _choices(result)
    lines.append(f"Total time {result.seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def save(result: ImplicitBenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """Write results.csv (every row), results.json (config, summary, comparisons, choices) and results.md,
    each atomically (a reader never sees half a file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp:
        result.rows.to_csv(tmp, index=False)
    write_json(out / "results.json", {"dataset": result.dataset, "feedback": "implicit", "config": result.config,
                                      "summary": result.summary, "comparisons": result.comparisons,
                                      "choices": result.choices, "seconds": result.seconds})
    write_text(out / "results.md", results_markdown(result))
    return {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md"}


def _comparison_table(result: ImplicitBenchmarkResult, scenario: str, columns: Sequence[int]) -> list[str]:
    comp = result.comparisons
    lines: list[str] = []
    for method, by_scenario in comp.get("pairs", {}).items():
        cells = by_scenario.get(scenario, {})
        metrics = [m for m in result.config.compare_metrics if any(m in c for c in cells.values())]
        if not metrics:
            continue
        base = comp.get("best_baselines", {}).get(scenario) or comp["best_baseline"]
        lines += [f"### {method} minus {base}, paired by test user", "",
                  "Bootstrap 95% interval over test users (seeds pooled); \"yes\": the interval excludes 0 (above 0: "
                  f"{method} is better).", "",
                  "| K | " + " | ".join(f"{m} difference | 95% CI | excludes 0" for m in metrics) + " | users |",
                  "|---" * (2 + 3 * len(metrics)) + "|"]
        for k in columns:
            row = cells.get(_k(k), {})
            parts, users = [], "-"
            for metric in metrics:
                c = row.get(metric)
                if c is None:
                    parts += ["-", "-", "-"]
                    continue
                users = str(c["tasks"])
                parts += [f"{c['difference']:+.4f}", f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
                          "yes" if c["excludes_zero"] else "no"]
            lines.append(f"| {_k(k)} | " + " | ".join(parts) + f" | {users} |")
        lines.append("")
    return lines


def _small_k_table(result: ImplicitBenchmarkResult, scenario: str, order: Sequence[str]) -> list[str]:
    ks = [k for k in SMALL_K if k in result.config.support_sizes]
    metrics = ["mrr", *(f"hit@{k}" for k in result.config.ks), *(f"coverage@{k}" for k in result.config.ks),
               *(f"long_tail@{k}" for k in result.config.ks)]
    if not ks or not order:
        return []
    lines = ["### MRR, hit rate, catalogue coverage and long-tail share at small K", "",
             "coverage@k: share of the catalogue in some user's top k; long_tail@k: share of recommended slots "
             "outside the 20% most popular catalogue items (training popularity).", "",
             "| method | K | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for m in order:
        for k in ks:
            lines.append(f"| {m} | {k} | " + " | ".join(_fmt(_cell(result, k, scenario, m, x)) for x in metrics) + " |")
    lines.append("")
    return lines


def _best_baselines(comp: Mapping, scenarios: Sequence[str]) -> str:
    """``new users **ials**, ... **content**``: each scenario's best baseline (results of old runs: the one)."""
    chosen = comp.get("best_baselines") or {s: comp.get("best_baseline") for s in scenarios}
    return ", ".join(f"{SCENARIO_TITLES.get(s, s).split(' (')[0]} **{chosen.get(s) or '-'}**" for s in scenarios)


def _choices(result: ImplicitBenchmarkResult) -> list[str]:
    lines = ["## Settings chosen on validation users, per seed", "",
             "Every setting, and each grid point's or epoch's validation score: results.json, \"choices\".", "",
             f"| method | seed | chosen | validation {result.config.selection_metric} |", "|---|---|---|---|"]
    for method, by_seed in result.choices.items():
        for seed, c in by_seed.items():
            chosen = c.get("chosen")
            scalars = {k: v for k, v in chosen.items() if not isinstance(v, (Mapping, list, tuple))} \
                if isinstance(chosen, Mapping) else {}
            text = ", ".join(f"{k} = {_short(v)}" for k, v in scalars.items()) or "-"
            score = c.get("validation", math.nan)
            lines.append(f"| {method} | {seed} | {text} | {score:.4f} |" if score == score else f"| {method} | {seed} | {text} | - |")
    return lines + [""]


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _curve_metrics(compare_metrics: Sequence[str], ks: Sequence[int]) -> list[str]:
    """The K-curve's metrics: the compared ones that are recall / nDCG, else recall and nDCG at the largest k."""
    chosen = [m for m in compare_metrics if m.startswith(("recall@", "ndcg@"))]
    return chosen or [f"recall@{max(ks)}", f"ndcg@{max(ks)}"]


def _order(result: ImplicitBenchmarkResult, scenario: str, metric: str) -> list[str]:
    """Methods best first on the whole-support ``metric``."""
    methods = {m for k, by in result.summary.items() for m in by.get(scenario, {})}

    def key(m: str) -> float:
        v = _cell(result, 0, scenario, m, metric)
        return -(v["mean"] if v and v["mean"] == v["mean"] else -math.inf)

    return sorted(methods, key=lambda m: (key(m), m))


def _cell(result: ImplicitBenchmarkResult, k: int, scenario: str, method: str, metric: str) -> Mapping | None:
    return result.summary.get(str(k), {}).get(scenario, {}).get(method, {}).get(metric)


def _k(k: int) -> str:
    return "all" if k == 0 else str(k)


def _fmt(cell: Mapping | None, digits: int = 4) -> str:
    """``mean ± half-width``; with too few seeds for an interval the mean and the range (one seed: the value)."""
    if not cell or cell["mean"] != cell["mean"]:
        return "-"
    if cell["ci95"] != cell["ci95"]:
        if cell.get("n", 1) > 1 and cell["low"] != cell["high"]:
            return f"{cell['mean']:.{digits}f} (range {cell['low']:.{digits}f} to {cell['high']:.{digits}f})"
        return f"{cell['mean']:.{digits}f}"
    return f"{cell['mean']:.{digits}f} ± {cell['ci95']:.{digits}f}"
