"""``metarec benchmark``: every method x scenario x metric over seeds, with intervals and plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from metarec.cli.options import (ATTRIBUTE_OPTION, COLUMN_OPTION, HISTORY_AS_PRIOR_OPTION, HISTORY_MAX_NEW_SUPPORT_OPTION,
                                 ITEMS_OPTION, RATING_SCALE_OPTION, USER_HISTORY_OPTION, USERS_OPTION, console,
                                 data_overrides, err_console, errors, history_limit, ints, process_threads, progress_bars,
                                 words)
from metarec.cli.presets import PRESET_OPTION


def benchmark(
    out: Path = typer.Option(..., "--out", help="Folder for results.csv / .json / .md and the plots."),
    dataset: str = typer.Option("ml-100k", help="Dataset name or path."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset."),
    protocol: str = typer.Option("melu", help="melu, time or splits."),
    split_dir: Optional[str] = typer.Option(None, help="With --protocol splits: the published split files."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds (each: a split and an initialisation)."),
    split_seed: Optional[int] = typer.Option(None, help="Score every seed on this seed's split: the seeds then vary "
                                             "only the training (initialisation, task order) [default: each its own]."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated methods (default: all but maml-ensemble, "
                                           "the recipe's meta-learner from 3 initialisations, averaged)."),
    members: Optional[int] = typer.Option(None, help="maml-ensemble's (meta-ensemble's) initialisations, "
                                          "2-16 [default: 3]."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run.toml whose values override the meta-learner's "
                                          "recipe; the searched settings it sets are not searched."),
    preset: Optional[str] = PRESET_OPTION,
    search: bool = typer.Option(True, "--search/--no-search", help="The meta-learner's recipe chosen on each seed's "
                                "validation users [default: search]."),
    users: Optional[str] = USERS_OPTION,
    items: Optional[str] = ITEMS_OPTION,
    column: List[str] = COLUMN_OPTION,
    attribute: List[str] = ATTRIBUTE_OPTION,
    rating_scale: Optional[str] = RATING_SCALE_OPTION,
    support_draws: Optional[int] = typer.Option(None, help="Seeded draws of the K support ratings per test task "
                                                "(averaged); default 3 (--quick: 1 with --feedback implicit)."),
    heavy_users: Optional[str] = typer.Option(None, help="drop (MeLU) or chunk: users above 100 ratings feed meta-training "
                                               "[default: the config's [split] heavy_users, else drop]."),
    support_sizes: str = typer.Option("1,3,5,10,20", help="Support sizes K of the K-curves."),
    user_history: bool = USER_HISTORY_OPTION,
    history_max_new_support: Optional[str] = HISTORY_MAX_NEW_SUPPORT_OPTION,
    history_as_prior: bool = HISTORY_AS_PRIOR_OPTION,
    item_fold_in: bool = typer.Option(False, "--item-fold-in", help="Also score the new-item scenarios with new "
                                      "items folded in from every test task's support ratings (<scenario>_pooled)."),
    epochs: Optional[int] = typer.Option(None, help="Override the meta-learners' maximum epochs."),
    quick: bool = typer.Option(False, "--quick", help="A small version (CI): 2 seeds, few methods, 2 epochs."),
    resume: bool = typer.Option(False, "--resume", help="Continue the benchmark killed in --out (the same command): "
                                "the methods it had finished on each seed (OUT/partial) are loaded, not fitted again."),
    feedback: str = typer.Option("explicit", help="explicit (rating prediction and ranking) or implicit (top-N "
                                 "ranking of held-out positives against the whole catalogue; no plots)."),
    positive_threshold: Optional[float] = typer.Option(None, help="With --feedback implicit: ratings >= this are the "
                                                       "positives; default: every interaction is one."),
) -> None:
    """Every method x scenario x metric over seeds, mean +- 95% CI, paired bootstrap, plots."""
    if feedback not in ("explicit", "implicit"):
        raise typer.BadParameter(f"expected explicit or implicit, got {feedback!r}", param_hint="--feedback")
    if feedback == "implicit":
        unused = {"--protocol splits": protocol == "splits", "--split-dir": split_dir is not None,
                  "--split-seed": split_seed is not None, "--config": config is not None, "--preset": preset is not None,
                  "--item-fold-in": item_fold_in, "--epochs": epochs is not None}
        given = [flag for flag, used in unused.items() if used]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: not used by the implicit benchmark (its splits are built from "
                                     "the positives; its baselines are tuned on validation users)", param_hint="--feedback")
        with errors():
            data = data_overrides(dataset, data_dir, users, items, column, attribute, rating_scale)
            _implicit(out, data, positive_threshold, protocol, heavy_users, seeds, methods, support_sizes,
                      support_draws, members, quick, resume)
        return
    if positive_threshold is not None:
        raise typer.BadParameter("only with --feedback implicit", param_hint="--positive-threshold")
    support_draws = 3 if support_draws is None else support_draws
    ensemble = {} if members is None else dict(ensemble_members=members)
    with errors():
        from metarec.eval.benchmark import (DEFAULT_METHODS, BenchmarkConfig, BenchmarkJournal, config_dict, run_benchmark,
                                            write_results)
        from metarec.errors import require_extra
        from metarec.meta.recipe import layered_config

        require_extra("matplotlib", "plot", "the benchmark's plots")  # before hours of work, not after
        run_config, fixed = layered_config(config, preset)
        data = data_overrides(dataset, data_dir, users, items, column, attribute, rating_scale)
        run_config = run_config.override("data", **data)
        if epochs is not None:
            run_config = run_config.override("train", epochs=epochs)
        process_threads(run_config.train.threads)
        table = run_config.data if run_config.data.is_table else None
        options = dict(dataset=dataset, data_dir=data_dir, protocol=protocol, split_dir=split_dir, heavy_users=heavy_users,
                       user_history=user_history, history_max_new_support=history_limit(history_max_new_support),
                       history_as_prior=history_as_prior, item_fold_in=item_fold_in, split_seed=split_seed,
                       data=table)
        if quick:
            cfg = BenchmarkConfig.quick(**options)
        else:
            cfg = BenchmarkConfig(seeds=ints(seeds, "seeds"), support_sizes=ints(support_sizes, "support-sizes"),
                                  methods=tuple(words(methods)) or DEFAULT_METHODS,
                                  run=run_config, search=search, fixed=fixed, support_draws=support_draws, **ensemble,
                                  **options)
        started = time.perf_counter()
        journal = BenchmarkJournal(out / "partial")
        journal.open(config_dict(cfg), resume)

        with progress_bars() as progress:
            bar = progress.add_task("benchmark", total=None)

            def report(msg: str, done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total, description=f"benchmark: {msg}")
                if not err_console.is_terminal:  # a log file gets one line per step instead of a bar
                    err_console.print(f"benchmark step {done}/{total}: {msg} (at {time.perf_counter() - started:.0f} s)",
                                      highlight=False)

            result = run_benchmark(cfg, progress=report, journal=journal)
        paths = write_results(result, out)
        journal.remove()
        console.print(paths["md"].read_text(encoding="utf-8"), markup=False, highlight=False)
        console.print(f"wrote {out} in {result.seconds:.0f} s")


def _implicit(out: Path, data: dict, positive_threshold: Optional[float], protocol: str, heavy_users: Optional[str],
              seeds: str, methods: Optional[str], support_sizes: str, support_draws: Optional[int],
              members: Optional[int], quick: bool, resume: bool) -> None:
    """``--feedback implicit``: the positives of the dataset (all interactions, or those rated >=
    ``--positive-threshold``), every implicit method on the K-curve (:mod:`metarec.eval.implicit`)."""
    from dataclasses import asdict, replace

    from metarec.data.implicit import to_implicit
    from metarec.data.loaders.registry import load_data, load_dataset
    from metarec.errors import ConfigError
    from metarec.eval.benchmark import BenchmarkJournal
    from metarec.eval.implicit import DEFAULT_METHODS, ImplicitBenchmarkConfig, run_implicit_benchmark, save
    from metarec.eval.implicit.methods import KNOWN_METHODS
    from metarec.meta.run import DataConfig

    table = DataConfig(**data)
    options: dict = dict(methods=tuple(words(methods)) or DEFAULT_METHODS)
    unknown = [m for m in options["methods"] if m not in KNOWN_METHODS]
    if unknown:  # before the data is read
        raise ConfigError(f"unknown implicit method(s) {unknown}; known: {', '.join(KNOWN_METHODS)}")
    if support_draws is not None:
        options["support_draws"] = support_draws
    if members is not None:
        options["ensemble_members"] = members
    if quick:
        cfg = ImplicitBenchmarkConfig.quick(**options)
    else:
        cfg = ImplicitBenchmarkConfig(seeds=ints(seeds, "seeds"), support_sizes=ints(support_sizes, "support-sizes"),
                                      **options)
    cfg = replace(cfg, split=replace(cfg.split, protocol=protocol, heavy_users=heavy_users or cfg.split.heavy_users))
    started = time.perf_counter()
    if table.is_table:
        dataset = to_implicit(load_data(table), threshold=positive_threshold)
    else:
        dataset = load_dataset(table.dataset, data_dir=table.data_dir, feedback="implicit",
                               positive_threshold=positive_threshold)
    journal = BenchmarkJournal(out / "partial")
    journal.open({"feedback": "implicit", "config": asdict(cfg), "data": data, "positive_threshold": positive_threshold,
                  "sizes": [dataset.n_users, dataset.n_items, dataset.n_ratings]}, resume)
    with progress_bars() as progress:
        bar = progress.add_task("implicit benchmark", total=None)

        def report(msg: str, done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total, description=f"implicit benchmark: {msg}")
            if not err_console.is_terminal:
                err_console.print(f"benchmark step {done}/{total}: {msg} (at {time.perf_counter() - started:.0f} s)",
                                  highlight=False)

        result = run_implicit_benchmark(dataset, cfg, progress=report, journal=journal)
    paths = save(result, out)
    journal.remove()
    console.print(paths["md"].read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(f"wrote {out} in {result.seconds:.0f} s")
