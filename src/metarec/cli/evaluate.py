"""``metarec evaluate``: MAE and RMSE per test scenario of a run, on its own split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from metarec.cli.options import (HISTORY_AS_PRIOR_OPTION, HISTORY_MAX_NEW_SUPPORT_OPTION, USER_HISTORY_OPTION, console,
                                 errors, history_limit, history_rule, load_run, print_json, progress_bars,
                                 scenario_table)
from metarec.errors import MetarecError


def evaluate(
    run: Path = typer.Argument(..., help="A run folder of `metarec train` or a rec.save() folder."),
    steps: Optional[int] = typer.Option(None, help="Inner steps at test time (default: the run's)."),
    user_history: bool = USER_HISTORY_OPTION,
    history_max_new_support: Optional[str] = HISTORY_MAX_NEW_SUPPORT_OPTION,
    history_as_prior: bool = HISTORY_AS_PRIOR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """MAE and RMSE per test scenario, with and without adaptation, on the run's own split (an implicit-feedback
    run: Recall, nDCG and MRR of the whole catalogue ranked, per scenario and support size)."""
    with errors():
        from metarec.meta.ensemble import load_members
        from metarec.meta.trainer import evaluate_run

        limit = history_limit(history_max_new_support)
        with progress_bars() as progress:  # loading and scoring take seconds: say so
            bar = progress.add_task("loading the run and rebuilding its split", total=None)
            split, ckpt = load_run(run)
            members = load_members(run, ckpt)  # an ensemble's other members: the score is their mean
            if ckpt.model_config.implicit:
                if steps is not None:
                    raise MetarecError("--steps: an implicit model's fold-in is closed-form; it has no inner steps")
                from metarec.eval.implicit.evaluate import evaluate_implicit_run

                def ranking(scenario: str, done: int, total: int) -> None:
                    progress.update(bar, completed=done, total=total,
                                    description=f"ranking the catalogue for test users: {scenario}")

                ranked = evaluate_implicit_run(ckpt, split, progress=ranking, members=members)
            else:
                def report(scenario: str, done: int, total: int) -> None:
                    progress.update(bar, completed=done, total=total, description=f"scoring test users: {scenario}")

                results = evaluate_run(ckpt, split, steps, user_history=user_history, history_max_new_support=limit,
                                       history_as_prior=history_as_prior, progress=report, members=members)
        if ckpt.model_config.implicit:
            return _print_implicit(run, ckpt, ranked, as_json)
        rule = history_rule(user_history, limit, history_as_prior)
        if as_json:
            print_json(results)
            return
        ensemble = f", an ensemble of {len(members) + 1} meta-learners" if members else ""
        table = scenario_table(f"{run} - best epoch {ckpt.state.get('best_epoch')}{ensemble}",
                               ("tasks", "MAE", "RMSE", "MAE (no adaptation)", "RMSE (no adaptation)"))
        for name, m in results.items():
            table.add_row(name, str(m["tasks"]), f"{m['mae']:.4f}", f"{m['rmse']:.4f}", f"{m['mae_no_adapt']:.4f}", f"{m['rmse_no_adapt']:.4f}")
        console.print(table)
        console.print(f"known users' history (warm, new items): {rule}", highlight=False)


def _print_implicit(run: Path, ckpt, results: dict, as_json: bool) -> None:
    """An implicit run's full-catalogue ranking metrics per test scenario and support size K
    (:func:`metarec.eval.implicit.evaluate.evaluate_implicit_run`)."""
    if as_json:
        print_json(results)
        return
    metrics = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "nDCG@10", "ndcg@20": "nDCG@20", "mrr": "MRR"}
    table = scenario_table(f"{run} - best epoch {ckpt.state.get('best_epoch')} (implicit: the whole catalogue ranked, "
                           "the support excluded)", ("support", "users", *metrics.values()))
    for scenario, points in results.items():
        for point, row in points.items():
            support = "all" if point == "all" else f"K = {point[1:]}"
            table.add_row(scenario, support, str(int(row["tasks"])), *(f"{row[m]:.4f}" for m in metrics))
    console.print(table)
    console.print("K: the support cut to K positives (3 seeded draws, averaged); users with fewer are left out",
                  highlight=False)
