"""``metarec demo``: meta-train on ML-100K (else synthetic data), compare with two baselines, recommend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metarec.cli.options import console, err_console, errors, history_rule, process_threads, progress_bars

if TYPE_CHECKING:
    from metarec.demo import DemoResult


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run folder of the demo (checkpoints, metrics, the plot)."),
    epochs: int = typer.Option(30, min=1, help="Maximum meta-training epochs (early stopping on validation users)."),
    download: bool = typer.Option(True, "--download/--no-download",
                                  help="Download ML-100K when it is neither in $METAREC_DATA_DIR nor cached."),
) -> None:
    """Meta-train on ML-100K (else the synthetic dataset), compare with two baselines, plot, recommend."""
    with errors():
        from metarec.demo import run_demo
        from metarec.meta.recipe import recipe_base

        process_threads(recipe_base().train.threads)  # the demo trains the recipe
        with progress_bars() as progress:
            bars: dict[str, int] = {}

            def report(step: str, done: int, total: int) -> None:
                if step not in bars:
                    bars[step] = progress.add_task(step, total=total)
                progress.update(bars[step], completed=done, total=total)

            result = run_demo(out, epochs=epochs, download=download, progress=report,
                              notice=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
        print_demo(result, console)


def print_demo(result: DemoResult, console: Console) -> None:
    """Render a :class:`DemoResult` with rich."""
    import numpy as np

    from metarec.demo import RANKING_METRIC, SCENARIO_LABELS, SCENARIOS, SUPPORT_DRAWS

    labels = result.labels
    meta = labels["maml"].rsplit(",", 1)[0]  # "meta fold-in" (closed-form inner loop) or "MAML"

    console.print(f"[bold]{escape(result.description)}[/bold]")
    chosen = ", ".join(f"{k.split('.')[-1]} = {v}" for k, v in result.recipe["chosen"].items())
    console.print(f"recipe chosen on validation users ({result.recipe['trials']} trainings): {escape(chosen)}; "
                  f"best epoch {result.best_epoch}, validation score {result.best_val_mae:.4f}")
    curve = Table(title="A newcomer with K ratings: test query MAE (lower is better; "
                        f"{SUPPORT_DRAWS} draws of the K ratings per user)")
    for col in ("scenario", "K", "users", meta, "bias", "MF", f"{meta} - best [95% CI]"):
        curve.add_column(col, justify="left" if col == "scenario" else "right", no_wrap=True)
    k_curve = result.k_curve
    for scenario in ("new_users", "new_users_new_items"):
        sub = k_curve[k_curve["scenario"] == scenario] if len(k_curve) else k_curve
        ks = list(dict.fromkeys(sub["k"])) if len(sub) else []
        for i, k in enumerate(ks):
            cell = sub[sub["k"] == k].set_index("method")
            maes = {m: cell.loc[m, "mae"] for m in ("maml", "bias", "mf") if m in cell.index}
            best = min(maes.values())
            row = cell.iloc[0]
            diff = f"{row['vs_best_baseline']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
            curve.add_row(SCENARIO_LABELS[scenario] if i == 0 else "", str(k), str(int(row["tasks"])),
                          *[f"[bold]{maes[m]:.4f}[/bold]" if maes.get(m) == best else f"{maes.get(m, float('nan')):.4f}"
                            for m in ("maml", "bias", "mf")], diff, end_section=i == len(ks) - 1)
    console.print(curve)
    console.print(f"K = all: each test user's whole support. {meta} - best: the meta-learner's MAE minus the better "
                  f"baseline's at that K, paired by user (below 0: {meta} is better; the interval is a bootstrap over "
                  "users of this one split - `metarec benchmark` gives intervals over seeds).")
    table = Table(title="Test users and items never seen in training: query MAE (lower is better), "
                        "full-catalogue nDCG@10 (higher is better)")
    for col in ("scenario (test tasks)", "method", "MAE", "nDCG@10"):
        table.add_column(col, justify="right" if col in ("MAE", "nDCG@10") else "left", no_wrap=True)
    scenarios = [s for s in SCENARIOS if s in set(result.table["scenario"])]
    for s in scenarios:
        sub = result.table[result.table["scenario"] == s]
        best_mae, best_ndcg = sub["mae"].min(), sub[RANKING_METRIC].max()
        for i, row in enumerate(sub.to_dict("records")):
            mae, ndcg = row["mae"], row[RANKING_METRIC]
            table.add_row(f"{SCENARIO_LABELS[s]} ({row['tasks']})" if i == 0 else "", labels.get(row["method"], row["method"]),
                          f"[bold]{mae:.4f}[/bold]" if mae == best_mae else f"{mae:.4f}",
                          f"[bold]{ndcg:.4f}[/bold]" if ndcg == best_ndcg else f"{ndcg:.4f}",
                          end_section=i == len(sub) - 1)
    console.print(table)
    what = (f"{meta}: meta-learned fold-in (closed-form inner loop, no gradient steps; method key `maml`) - "
            "meta-trained neural CF; a new user's ratings are folded in by a ridge solve whose prior "
            "and support-size dependent penalty were meta-learned, on tasks cut to a newcomer's few ratings"
            if meta != "MAML" else "MAML: meta-trained with gradient steps in the inner loop")
    console.print(f"{what} (no adapt: the attribute prior alone); bias: global mean + user "
                  "bias + item bias; MF: matrix factorisation; the baselines fold the new user in by ridge "
                  "regression too. Best per scenario in bold. One split (seed 0): intervals over seeds come from "
                  "`metarec benchmark`.")
    console.print(f"known users' history (new items): {history_rule(**result.history)}", highlight=False)
    console.print(f"plot: {result.plot}")

    user = result.user
    described = ", ".join(f"{k}={v}" for k, v in user["attributes"].items())
    console.print(f"\nA new (test) user{f' ({described})' if described else ''} rated 5 movies:")
    for _, title, rating in user["ratings"]:
        console.print(f"  {rating:.0f}  {title}", highlight=False)
    top = Table(title="Top-10 after adapting to these 5 ratings")
    for col in ("rank", "item_id", "predicted", "title", "their rating*"):
        top.add_column(col, justify="right" if col in ("rank", "predicted", "their rating*") else "left")
    for rank, row in enumerate(result.top.itertuples(index=False), 1):
        real = "" if np.isnan(row.held_out) else f"{row.held_out:.0f}"
        top.add_row(str(rank), str(row.item_id), f"{row.score:.2f}", row.title, real)
    console.print(top)
    console.print(f"* the user's real rating, when they rated the movie (among {user['n_other_ratings']} other "
                  "ratings the model never saw)")
    rate = " ".join(f"--rate {item_id}:{rating:.0f}" for item_id, _, rating in user["ratings"][:2])
    console.print(f"done in {result.seconds:.1f} s; run folder {result.run_dir} "
                  f"(try `metarec recommend {result.run_dir} {rate}`)", highlight=False)
