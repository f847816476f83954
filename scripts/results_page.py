"""One compact docs/results.md section per benchmark folder: the K-curve first, then the four scenarios.

    python scripts/results_page.py runs/bench-ml1m --title "ML-1M + IMDb, MeLU's protocol" \
        --command "metarec benchmark --dataset ml-1m-imdb ..." >> section.md
    python scripts/results_page.py --ensemble "ML-100K=runs/ml100k-ens5" "Last.fm=runs/lastfm-ens5" ...

Every number is read from the folder's results.json (what `metarec benchmark` wrote); nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metarec.eval.benchmark.report import recipes_chosen

CURVE = (("new_users", "new users"), ("new_users_new_items", "both new"))
SCENARIOS = ("warm", "new_users", "new_items", "new_users_new_items")
CURVE_METHODS = ("maml", "maml-ensemble", "maml-gd", "mf", "bias", "item-mean")
TABLE_METHODS = ("maml", "maml-ensemble", "maml-gd", "mf", "bias", "content", "global-neural", "global-neural-finetune")


def _cell(summary: dict, k: str, scenario: str, method: str, metric: str, ci: bool = True) -> str:
    cell = summary.get(k, {}).get(scenario, {}).get(method, {}).get(metric)
    if not cell or cell["mean"] is None or cell["mean"] != cell["mean"]:
        return "-"
    if not ci or cell["ci95"] is None or cell["ci95"] != cell["ci95"]:  # one seed: no interval (null in JSON)
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} ±{cell['ci95']:.3f}"


def _diff(cell: dict | None) -> str:
    if not cell:
        return "-"
    low, high = cell["ci95"]
    mark = "**" if high < 0 else ""
    return f"{mark}{cell['mae_difference']:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def section(folder: Path, title: str, command: str) -> str:
    result = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    summary, comparisons = result["summary"], result["comparisons"]
    ks = [str(k) for k in result["config"]["support_sizes"]]
    cat_ks = [str(k) for k in result["config"]["catalogue_support_sizes"]]
    meta = comparisons.get("best_meta_learner")
    methods = [m for m in CURVE_METHODS if any(m in summary.get(k, {}).get(s, {}) for k in ks for s, _ in CURVE)]
    minutes = result.get("seconds", 0) / 60
    out = [f"### {title}", "", "```bash", f"{command}   # {minutes:.0f} min on 2 cores, beside another benchmark",
           "```", ""]
    chosen = recipes_chosen(result.get("histories", {})).get("maml", {})
    if chosen:
        out += ["Recipe chosen on each seed's validation users: " + "; ".join(
            f"seed {seed}: " + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in settings.items())
            for seed, settings in chosen.items()) + ".", ""]
    columns = [f"{label} K={k}" if k != "0" else f"{label} all" for _, label in CURVE for k in [*ks, "0"]]
    out += [f"Query MAE, mean ±95% t-interval over seeds; K-curve ({result['config']['support_draws']} seeded draws of "
            "the K support ratings per test task):", "",
            "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method in methods:
        cells = [_cell(summary, k, scenario, method, "mae") for scenario, _ in CURVE for k in [*ks, "0"]]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    out += ["", f"{meta} minus each fold-in baseline, paired by test task (bootstrap 95% interval, seeds pooled; "
            "bold: the interval is below 0, the meta-learner better):", "",
            "| | " + " | ".join(f"K={k}" for k in ks) + " | all |", "|---|" + "---|" * (len(ks) + 1)]
    curve = comparisons.get("curve", {})
    for scenario, label in CURVE:
        for base in ("mf", "bias"):
            cells = [_diff(curve.get(scenario, {}).get(k, {}).get(base)) for k in [*ks, "all"]]
            out.append(f"| {label}: {meta} − {base} | " + " | ".join(cells) + " |")
    out += ["", "Full-catalogue nDCG@10 (every item not in the support; relevant: query items rated >= 4):", "",
            "| method | " + " | ".join(f"{label} K={k}" for _, label in CURVE for k in cat_ks) + " |",
            "|---|" + "---|" * (len(CURVE) * len(cat_ks))]
    for method in [m for m in methods if m not in ("bias", "maml-gd")] + ["popularity"]:
        cells = [_cell(summary, k, scenario, method, "catalogue_ndcg@10", ci=False) for scenario, _ in CURVE for k in cat_ks]
        if any(c != "-" for c in cells):
            out.append(f"| {method} | " + " | ".join(cells) + " |")
    present = [m for m in TABLE_METHODS if any(m in summary.get("0", {}).get(s, {}) for s in SCENARIOS)]
    out += ["", "Every scenario with the whole support: query MAE ±95% interval over seeds (RMSE):", "",
            "| method | " + " | ".join(s.replace("_", " ") for s in SCENARIOS) + " |", "|---|" + "---|" * len(SCENARIOS)]
    for method in present:
        cells = [f"{_cell(summary, '0', s, method, 'mae')} ({_cell(summary, '0', s, method, 'rmse', ci=False)})"
                 for s in SCENARIOS]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def _short(cell: dict | None) -> str:
    """A difference, bold without its interval where the interval is below 0 (a win), else with it."""
    if not cell:
        return "-"
    low, high = cell["ci95"]
    if high < 0:
        return f"**{cell['mae_difference']:+.3f}**"
    return f"{cell['mae_difference']:+.3f} [{low:+.3f}, {high:+.3f}]"


def ensemble_tables(runs: list[tuple[str, Path]], ks: tuple[str, ...] = ("1", "3", "5", "10", "all")) -> str:
    """One row per dataset: the best meta-learner (the ensemble) minus MF and minus bias on the K-curve,
    then every scenario with the whole support, from each run folder's results.json."""
    results = [(name, json.loads((folder / "results.json").read_text(encoding="utf-8"))) for name, folder in runs]
    columns = [f"{label} {'all' if k == 'all' else f'K={k}'}" for _, label in CURVE for k in ks]
    out: list[str] = []
    for base in ("mf", "bias"):
        out += [f"| ensemble − {base} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for name, result in results:
            curve = result["comparisons"].get("curve", {})
            cells = [_short(curve.get(scenario, {}).get(k, {}).get(base)) for scenario, _ in CURVE for k in ks]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    cat = [(scenario, label, k) for scenario, label in CURVE for k in ("1", "3", "5")]
    out += ["| full-catalogue nDCG@10, ensemble / MF | " + " | ".join(f"{label} K={k}" for _, label, k in cat) + " |",
            "|---|" + "---|" * len(cat)]
    for name, result in results:
        meta = result["comparisons"].get("best_meta_learner")
        cells = [f"{_cell(result['summary'], k, s, meta, 'catalogue_ndcg@10', ci=False)} / "
                 f"{_cell(result['summary'], k, s, 'mf', 'catalogue_ndcg@10', ci=False)}" for s, _, k in cat]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    out += ["| whole support: query MAE, ensemble / MF | " + " | ".join(s.replace("_", " ") for s in SCENARIOS) + " |",
            "|---|" + "---|" * len(SCENARIOS)]
    for name, result in results:
        meta = result["comparisons"].get("best_meta_learner")
        cells = [f"{_cell(result['summary'], '0', s, meta, 'mae', ci=False)} / {_cell(result['summary'], '0', s, 'mf', 'mae', ci=False)}"
                 for s in SCENARIOS]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?")
    parser.add_argument("--title")
    parser.add_argument("--command")
    parser.add_argument("--ensemble", nargs="+", metavar="NAME=FOLDER", help="the ensemble's tables, one row per run")
    args = parser.parse_args()
    if args.ensemble:
        print(ensemble_tables([(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in args.ensemble]))
    elif args.folder and args.title and args.command:
        print(section(args.folder, args.title, args.command))
    else:
        parser.error("give a folder with --title and --command, or --ensemble NAME=FOLDER ...")


if __name__ == "__main__":
    main()
