"""``metarec onboard``: the items to ask a new user to rate first, or the experiment comparing strategies."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from metarec.cli.options import console, errors, ints, load_run, print_json, progress_bars, titles, words
from metarec.errors import MetarecError


def onboard(
    run: Path = typer.Argument(..., help="A run folder of `metarec train` or a rec.save() folder."),
    n: int = typer.Option(10, "--n", min=1, help="How many items to ask a new user to rate."),
    strategy: str = typer.Option("adaptive", help="adaptive (chosen on validation users: it asks in rounds, each from "
                                                  "the answers so far), popular, pop-entropy, melu-evidence, "
                                                  "greedy-info, greedy-error or coverage; see docs/onboarding.md."),
    shown: Optional[str] = typer.Option(None, "--shown", help="Comma-separated ids of the items already shown: the "
                                                              "next round leaves them out (and adapts to them)."),
    rated: Optional[str] = typer.Option(None, "--rated", help="Comma-separated ids of the shown items the user rated."),
    experiment: bool = typer.Option(False, "--experiment", help="Compare the strategies on held-out users instead."),
    budgets: str = typer.Option("10,20,50", help="--experiment: comma-separated budgets (items shown, or answers "
                                                 "with --protocol walk)."),
    protocol: str = typer.Option("shown", help="--experiment: shown (the first m items are shown, the user rates "
                                               "those they know) or walk (shown until n answers)."),
    users: str = typer.Option("test", help="--experiment: test, or validation (to choose strategy and budget)."),
    seeds: str = typer.Option("0,1,2", help="--experiment: seeds of the random questionnaire."),
    strategies: Optional[str] = typer.Option(None, help="--experiment: comma-separated strategies (default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", help="--experiment: also write rows and summary as CSV here."),
    pool_runs: Optional[List[Path]] = typer.Option(None, "--pool-run", help="--experiment: another run (e.g. another "
                                                   "split seed) whose held-out users join the comparison; repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The items to ask a new user to rate first; with --experiment, what each strategy buys on held-out users."""
    with errors():
        from metarec.eval.onboarding_experiment import check_protocol, onboarding_experiment, pool_results, summarise
        from metarec.onboarding.strategies import STRATEGIES, check_strategies, next_round

        if users not in ("test", "validation"):
            raise MetarecError(f"--users {users!r}: expected test or validation")
        check_protocol(protocol)
        chosen_strategies = tuple(words(strategies)) or STRATEGIES
        check_strategies(chosen_strategies if experiment else [strategy])
        budget_values, seed_values = ints(budgets, "budgets"), ints(seeds, "seeds")
        split, checkpoint = load_run(run)
        if not experiment:
            ids = next_round(strategy, split, checkpoint.learner, n, words(shown), words(rated))
            names = titles(split.dataset.items)
            _print_round(strategy, [{"item_id": i, "title": names.get(i, "")} for i in ids], as_json,
                         checkpoint.model_config.implicit)
            return
        runs = [(run, split, checkpoint.learner)]
        from metarec.meta.ensemble import member_checkpoint_dirs

        for ensemble in [run, *(pool_runs or [])]:
            if member_checkpoint_dirs(ensemble):  # the experiment adapts with one model
                console.print(f"{ensemble} is an ensemble: the experiment scores with its first member only",
                              highlight=False)
        for other in pool_runs or []:
            other_split, other_checkpoint = load_run(other)
            runs.append((other, other_split, other_checkpoint.learner))
        results = []
        with progress_bars() as progress:
            for run_dir, run_split, run_learner in runs:
                bar = progress.add_task(f"onboarding experiment {run_dir.name}", total=None)
                results.append(onboarding_experiment(
                    run_learner, run_split, validation=users == "validation", budgets=budget_values,
                    strategies=chosen_strategies, protocol=protocol, seeds=seed_values,
                    progress=lambda step, done, total, bar=bar: progress.update(
                        bar, description=f"onboarding: {step}", completed=done, total=total)))
        result = pool_results(results) if len(results) > 1 else results[0]
        summary = summarise(result)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            result.rows.to_csv(out / f"onboarding_{users}_{protocol}_rows.csv", index=False)
            summary.to_csv(out / f"onboarding_{users}_{protocol}_summary.csv", index=False)
        if as_json:
            print_json({"users": users, "scenario": result.scenario, "protocol": protocol,
                         "rows": result.rows.to_dict(orient="records"), "summary": summary.to_dict(orient="records")})
            return
        n_users = sum(int(r.rows["users"].iloc[0]) for r in results)
        budget_name = "items shown" if protocol == "shown" else "answers wanted"
        table = Table(title=f"Onboarding {n_users} {users} users ({result.scenario}, protocol {protocol}): "
                            f"adapt on the answers, score the query")
        for col in (budget_name, "strategy", "answers", "none", "shown", "MAE", "MAE - random [95% CI]",
                    "MAE - popular [95% CI]", "nDCG@10", "nDCG - random [95% CI]"):
            table.add_column(col, justify="left" if col == "strategy" else "right")
        for budget_value, group in summary.groupby("budget", sort=False):
            for i, row in enumerate(group.to_dict("records")):
                def delta(metric: str, reference: str = "random") -> str:
                    key = f"{metric}_vs_{reference}"
                    if key not in row or row[key] != row[key]:
                        return ""
                    low, high = row[f"{key}_ci"]
                    return f"{row[key]:+.4f} [{low:+.4f}, {high:+.4f}]"

                sd = f" ±{row['mae_sd_seeds']:.4f}" if row["seeds"] > 1 else ""
                table.add_row(str(budget_value) if i == 0 else "", row["strategy"], f"{row['mean_answers']:.1f}",
                              f"{row['no_answer_users']:.0f}", f"{row['mean_shown']:.1f}", f"{row['mae']:.4f}{sd}",
                              delta("mae"), delta("mae", "popular"), f"{row['ndcg@10']:.4f}", delta("ndcg@10"),
                              end_section=i == len(group) - 1)
        console.print(table)
        console.print("answers: mean items answered; none: users who answered nothing (scored with the model "
                      "without adaptation); random: mean ± sd over seeds; CIs: paired bootstrap over users.")


def _print_round(strategy: str, items: list[dict], as_json: bool, implicit: bool = False) -> None:
    if as_json:
        print_json({"strategy": strategy, "items": items})
        return
    ask = "which they know or like" if implicit else "to rate"  # an implicit model takes positives, not ratings
    table = Table(title=f"Ask a new user {ask} ({strategy})")
    for col in ("#", "item_id", "title"):
        table.add_column(col)
    for i, item in enumerate(items, 1):
        table.add_row(str(i), item["item_id"], item["title"])
    console.print(table)
