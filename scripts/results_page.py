"""One compact docs/results.md section per benchmark folder: the K-curve first, then the four scenarios.

    python scripts/results_page.py runs/bench-ml1m --title "ML-1M + IMDb, MeLU's protocol" \
        --command "metarec benchmark --dataset ml-1m-imdb ..." >> section.md

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--title", required=True)
    parser.add_argument("--command", required=True)
    args = parser.parse_args()
    print(section(args.folder, args.title, args.command))


if __name__ == "__main__":
    main()
