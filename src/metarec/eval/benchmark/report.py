"""Writing a benchmark: results.csv / .json / .md and the plots, the K-curve first."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


from metarec._io import atomic_path, write_json, write_text
from metarec.eval.benchmark.config import CURVE_SCENARIOS, BenchmarkConfig, method_label
from metarec.eval.benchmark.run import BenchmarkResult
from metarec.eval.benchmark.stats import MIN_INTERVAL_SEEDS
from metarec.errors import require_extra

SCENARIO_TITLES = {"new_users": "new users", "new_users_new_items": "new users on new items (both new)",
                   "warm": "warm", "new_items": "new items"}


def _curve_markdown(result: BenchmarkResult) -> list[str]:
    """The headline: query MAE against the number K of a newcomer's ratings, per method, then the best
    meta-learner against each curve baseline paired by task, then full-catalogue nDCG@10 at small K."""
    cfg, summary = result.config, result.summary
    ks = [str(k) for k in cfg.support_sizes]
    meta = result.comparisons.get("best_meta_learner")
    name = _namer(result)
    lines = ["## The K-curve: a newcomer with K ratings", "",
             f"Every test task cut to K support ratings ({cfg.support_draws} seeded draw(s) per task, averaged; "
             "tasks with fewer ratings left out), \"all\" = the task's whole support. Query MAE, mean ± 95% CI "
             f"over seeds (the range with fewer than {MIN_INTERVAL_SEEDS} seeds). Best meta-learner on validation users: **{name(meta)}**.", ""]
    for scenario in CURVE_SCENARIOS:
        methods = sorted({m for k in [*ks, "0"] for m in summary.get(k, {}).get(scenario, {})
                          if "mae" in summary[k][scenario][m]})
        if not methods:
            continue
        lines += [f"### {SCENARIO_TITLES[scenario]}: query MAE", "",
                  "| method | " + " | ".join(f"K={k}" for k in ks) + " | all |", "|---" * (len(ks) + 2) + "|"]
        order = sorted(methods, key=lambda m: summary.get(ks[0] if ks else "0", {}).get(scenario, {}).get(m, {})
                       .get("mae", {}).get("mean", math.inf))
        for m in order:
            cells = [_fmt(summary.get(k, {}).get(scenario, {}).get(m, {}).get("mae")) for k in [*ks, "0"]]
            lines.append(f"| {name(m)} | " + " | ".join(cells) + " |")
        tasks = [_tasks(result, scenario, k) for k in [*ks, "all"]]
        lines += ["| (test tasks, all seeds) | " + " | ".join(tasks) + " |", ""]
        curve = result.comparisons.get("curve", {}).get(scenario, {})
        bases = sorted({b for cells in curve.values() for b in cells})
        if curve and bases:
            lines += [f"{name(meta)} minus each baseline, paired by task (bootstrap 95% CI over tasks, seeds pooled; "
                      "below 0: the meta-learner is better):", "",
                      "| K | " + " | ".join(f"- {b} | 95% CI | per-seed CI" for b in bases) + " |",
                      "|---" * (1 + 3 * len(bases)) + "|"]
            for k in [*ks, "all"]:
                cells = []
                for b in bases:
                    c = curve.get(k, {}).get(b)
                    if c is None:
                        cells += ["-", "-", "-"]
                        continue
                    low, high = c["seed_ci95"]
                    cells += [f"{c['mae_difference']:+.4f}", f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
                              f"[{low:+.4f}, {high:+.4f}]" if low == low else "-"]
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
            lines.append("")
        cat_ks = [str(k) for k in cfg.catalogue_support_sizes if str(k) in summary]
        if cat_ks:
            lines += [f"### {SCENARIO_TITLES[scenario]}: full-catalogue nDCG@{cfg.catalogue_k}", "",
                      "| method | " + " | ".join(f"K={k}" for k in cat_ks) + " | all |", "|---" * (len(cat_ks) + 2) + "|"]
            metric = f"catalogue_ndcg@{cfg.catalogue_k}"
            ranked = [m for m in order if metric in summary.get(cat_ks[0], {}).get(scenario, {}).get(m, {})]
            ranked += [m for m in sorted(summary.get(cat_ks[0], {}).get(scenario, {}))
                       if m not in ranked and metric in summary[cat_ks[0]][scenario][m]]
            for m in ranked:
                cells = [_fmt(summary.get(k, {}).get(scenario, {}).get(m, {}).get(metric)) for k in [*cat_ks, "0"]]
                lines.append(f"| {name(m)} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _tasks(result: BenchmarkResult, scenario: str, k: str) -> str:
    key = scenario if k == "all" else f"{scenario}@{k}"
    cells = [c for c in result.comparisons.get("curve", {}).get(scenario, {}).get(k, {}).values()]
    if cells:
        return str(cells[0]["tasks"])
    return "-" if key else "-"


def recipes_chosen(histories: Mapping[str, Mapping[int, list[dict]]]) -> dict[str, dict[int, dict]]:
    """{method: {seed: settings}}: what the automatic recipe chose on each seed's validation users."""
    return _best_per_seed(histories, "recipe_trial", "val_score", "settings")


def _best_per_seed(histories: Mapping[str, Mapping[int, list[dict]]], marker: str, score: str,
                   value: str) -> dict[str, dict[int, Any]]:
    """{method: {seed: row[value]}} of the history row marked ``marker`` with the lowest ``score``."""
    out: dict[str, dict[int, Any]] = {}
    for method, per_seed in histories.items():
        for seed, rows in per_seed.items():
            tried = [r for r in rows if marker in r]
            if tried:
                out.setdefault(method, {})[seed] = min(tried, key=lambda r: r[score])[value]
    return out


METRIC_ORDER = ("mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@5", "precision@5", "map@5", "catalogue_ndcg@10",
                "catalogue_recall@10", "catalogue_mrr", "catalogue_coverage@10", "catalogue_popularity_percentile@10",
                "catalogue_long_tail@10")


def _fmt(cell: Mapping | None) -> str:
    """``mean ± half-width`` of the 95% interval; with fewer seeds than an interval needs, the mean and the
    range over seeds (one seed: the value alone)."""
    if not cell or cell["mean"] != cell["mean"]:
        return "-"
    if cell["ci95"] != cell["ci95"]:
        if cell.get("n", 1) > 1 and "low" in cell:
            return f"{cell['mean']:.4f} (range {cell['low']:.4f} to {cell['high']:.4f})"
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.4f} ± {cell['ci95']:.4f}"


def _namer(result: BenchmarkResult) -> Callable[[str | None], str]:
    """Method keys as people read them (:func:`method_label`: the closed-form ``maml`` is a fold-in)."""
    return lambda method: "-" if method is None else method_label(method, result.config.run)


def results_markdown(result: BenchmarkResult) -> str:
    """results.md: the K-curve first, then every scenario, the paired comparisons and what was chosen."""
    cfg = result.config
    name = _namer(result)
    varies = ("every seed: a split and an initialisation" if cfg.split_seed is None else
              f"one split (seed {cfg.split_seed}) for every seed: the seeds vary the training only")
    lines = [f"# Benchmark: {cfg.dataset}, {cfg.protocol} protocol, seeds {', '.join(map(str, cfg.seeds))}", "",
             f"Mean ± 95% CI over seeds (t-interval; {varies}; with fewer than {MIN_INTERVAL_SEEDS} seeds no "
             "interval is computed and the range over seeds is shown instead). Lower is better for MAE / RMSE and popularity "
             "percentile; higher for the ranking metrics. Methods selected on validation users only.", ""]
    lines += _curve_markdown(result)
    recipes = recipes_chosen(result.histories)
    if recipes:
        lines += ["## The automatic recipe's choice per seed (validation users only)", ""]
        for method, per_seed in recipes.items():
            for seed, settings in per_seed.items():
                lines.append(f"- {name(method)}, seed {seed}: " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
        lines.append("")
    lines += ["## Every scenario with the whole support", ""]
    full = result.summary.get("0", {})
    for scenario in ("warm", "new_users", "new_items", "new_users_new_items", "new_items_pooled",
                     "new_users_new_items_pooled"):
        if scenario not in full:
            continue
        methods = full[scenario]
        metrics = [m for m in METRIC_ORDER if any(m in v for v in methods.values())]
        lines += [f"### {scenario}", "", "| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        order = sorted(methods, key=lambda m: methods[m].get("mae", {}).get("mean", math.inf))
        for method in order:
            lines.append(f"| {name(method)} | " + " | ".join(_fmt(methods[method].get(m)) for m in metrics) + " |")
        lines.append("")
    comp = result.comparisons
    plain = {s: c for s, c in comp.get("scenarios", {}).items() if "@" not in s}
    if plain:
        lines += ["## Best meta-learner vs best baseline (paired bootstrap over test users)", "",
                  f"Chosen on the validation score: meta-learner **{name(comp['best_meta_learner'])}**, baseline "
                  f"**{comp['best_baseline']}**.", "",
                  "| scenario | MAE difference (meta - baseline) | 95% CI | P(meta better) | tasks | per seed | 95% CI over seeds (paired) |",
                  "|---|---|---|---|---|---|---|"]
        for scenario, c in plain.items():
            per_seed = " / ".join(f"{d:+.4f}" for d in c.get("seed_differences", []))
            low, high = c.get("seed_ci95", [float("nan")] * 2)
            seed_ci = f"[{low:+.4f}, {high:+.4f}]" if low == low else "-"
            lines.append(f"| {scenario} | {c['mae_difference']:+.4f} | [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | "
                         f"{c['p_meta_better']:.3f} | {c['tasks']} | {per_seed} | {seed_ci} |")
        lines.append("")
    separation = comp.get("interval_separation") or {}
    if separation:
        lines += [f"## {name(comp['best_meta_learner'])}'s MAE interval against each baseline's (95% over seeds)", "",
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
            lines.append(f"| {name(method)} | " + " | ".join(f"{per_seed.get(s, 1.0):g}" for s in cfg.seeds) + " |")
        lines.append("")
    lines.append(f"Total time {result.seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def chosen_pool_scales(histories: Mapping[str, Mapping[int, list[dict]]]) -> dict[str, dict[int, float]]:
    """{method: {seed: scale}}: the pooled item fold-in's scale each method chose on validation users
    (the candidate of lowest validation MAE recorded in its history)."""
    return _best_per_seed(histories, "pool_candidate", "val_new_items_mae", "pool_candidate")


def plot_results(result: BenchmarkResult, out: Path) -> list[Path]:
    """Two titled PNGs: the K-curve (MAE and full-catalogue nDCG against K, each point with its 95% interval
    over seeds, or the range over seeds where there are too few seeds) and the meta-learners' learning
    curves (validation MAE per epoch, mean over seeds with the range shaded)."""
    matplotlib = require_extra("matplotlib", "plot", "the benchmark's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    summary, cfg = result.summary, result.config
    name = _namer(result)
    seeds = ", ".join(map(str, cfg.seeds))
    spread = ("95% CI" if len(cfg.seeds) >= MIN_INTERVAL_SEEDS else "range")
    metrics = [("mae", "query MAE (lower is better)"),
               (f"catalogue_ndcg@{cfg.catalogue_k}", f"full-catalogue nDCG@{cfg.catalogue_k} (higher is better)")]
    scenarios = [s for s in CURVE_SCENARIOS if any(s in summary.get(str(k), {}) for k in cfg.support_sizes)]
    if scenarios:
        fig, axes = plt.subplots(len(metrics), len(scenarios), figsize=(5.2 * len(scenarios), 3.8 * len(metrics)),
                                 squeeze=False)
        for row, (metric, label) in enumerate(metrics):
            for col, scenario in enumerate(scenarios):
                ax = axes[row][col]
                methods = sorted({m for k in cfg.support_sizes for m, cells in summary.get(str(k), {}).get(scenario, {}).items()
                                  if metric in cells and not m.endswith("-no-adapt")})
                for method in methods:
                    pts = [(k, summary[str(k)][scenario][method][metric]) for k in cfg.support_sizes
                           if metric in summary.get(str(k), {}).get(scenario, {}).get(method, {})]
                    if pts:
                        ks, cells = zip(*pts)
                        ax.errorbar(ks, [c["mean"] for c in cells], yerr=_error_bars(cells), marker="o", capsize=3,
                                    label=name(method))
                ax.set_xscale("log")
                ax.set_xticks(list(cfg.support_sizes), labels=[str(k) for k in cfg.support_sizes])
                ax.set_title(f"{cfg.dataset}: {SCENARIO_TITLES[scenario]}")
                ax.set_xlabel("support ratings K of the newcomer")
                ax.set_ylabel(label)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7, loc="best")
        fig.suptitle(f"K-curve: mean and {spread} over seeds {seeds}", fontsize=10)
        written.append(_save(fig, out / "k_curve.png"))
    curves = {m: h for m, h in result.histories.items() if any("epoch" in r for v in h.values() for r in v)}
    if curves:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for method, by_seed in curves.items():
            per_epoch: dict[int, list[float]] = {}
            for hist in by_seed.values():
                for r in hist:
                    if "epoch" in r and r.get("val_mae") is not None:
                        per_epoch.setdefault(int(r["epoch"]), []).append(float(r["val_mae"]))
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            values = [per_epoch[e] for e in epochs]
            line, = ax.plot(epochs, [sum(v) / len(v) for v in values], label=name(method))
            ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.2, color=line.get_color())
        ax.set_title(f"{cfg.dataset}: validation MAE while meta-training (mean, range over seeds {seeds})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation MAE (lower is better)")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "learning_curves.png"))
    return written


def _error_bars(cells: Sequence[Mapping]) -> list[list[float]]:
    """Below / above each mean: the 95% half-width, else the range over seeds, else nothing (one seed)."""
    below, above = [], []
    for c in cells:
        if c["ci95"] == c["ci95"]:
            below.append(c["ci95"])
            above.append(c["ci95"])
        elif c.get("n", 1) > 1 and "low" in c:
            below.append(c["mean"] - c["low"])
            above.append(c["high"] - c["mean"])
        else:
            below.append(0.0)
            above.append(0.0)
    return [below, above]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def config_dict(config: BenchmarkConfig) -> dict:
    """The benchmark's configuration as results.json (and a resumed run's journal) records it."""
    cfg = asdict(config)
    cfg["run"] = config.run.to_dict()
    return cfg


def write_results(result: BenchmarkResult, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp:
        result.rows.to_csv(tmp, index=False)
    cfg = config_dict(result.config)
    histories = {m: {str(seed): h for seed, h in by_seed.items()}
                 for m, by_seed in result.histories.items()}  # learning curves, baselines' validation grids
    write_json(out / "results.json", {"config": cfg, "summary": result.summary, "comparisons": result.comparisons,
                                      "histories": histories, "seconds": result.seconds})
    write_text(out / "results.md", results_markdown(result))
    plots = plot_results(result, out)
    return {"csv": out / "results.csv", "json": out / "results.json", "md": out / "results.md", "plots": plots}

