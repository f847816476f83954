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
    """MAE and RMSE per test scenario, with and without adaptation, on the run's own split."""
    with errors():
        from metarec.meta.trainer import evaluate_run

        limit = history_limit(history_max_new_support)
        with progress_bars() as progress:  # loading and scoring take seconds: say so
            bar = progress.add_task("loading the run and rebuilding its split", total=None)
            split, ckpt = load_run(run)
            if ckpt.model_config.implicit:
                raise MetarecError(f"{run} was trained on implicit feedback: it ranks, it predicts no ratings, so MAE "
                                   "does not apply; its ranking is measured by metarec benchmark --feedback implicit")

            def report(scenario: str, done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total, description=f"scoring test users: {scenario}")

            results = evaluate_run(ckpt, split, steps, user_history=user_history, history_max_new_support=limit,
                                   history_as_prior=history_as_prior, progress=report)
        rule = history_rule(user_history, limit, history_as_prior)
        if as_json:
            print_json(results)
            return
        table = scenario_table(f"{run} - best epoch {ckpt.state.get('best_epoch')}",
                               ("tasks", "MAE", "RMSE", "MAE (no adaptation)", "RMSE (no adaptation)"))
        for name, m in results.items():
            table.add_row(name, str(m["tasks"]), f"{m['mae']:.4f}", f"{m['rmse']:.4f}", f"{m['mae_no_adapt']:.4f}", f"{m['rmse_no_adapt']:.4f}")
        console.print(table)
        console.print(f"known users' history (warm, new items): {rule}", highlight=False)
