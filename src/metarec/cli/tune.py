"""``metarec tune``: an Optuna search on validation users; writes RUNDIR/tune.json and RUNDIR/best.toml."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from metarec.cli.options import (ATTRIBUTE_OPTION, COLUMN_OPTION, DATA_DIR_OPTION, DATASET_OPTION, ITEMS_OPTION,
                                 PROTOCOL_OPTION, RATING_SCALE_OPTION, SPLIT_DIR_OPTION, USERS_OPTION,
                                 console, data_overrides, errors, layered_run_config, process_threads,
                                 progress_bars, split_of)
from metarec.cli.presets import PRESET_OPTION


def tune(
    out: Path = typer.Option(..., "--out", help="Folder for tune.json (every trial) and best.toml."),
    n_trials: int = typer.Option(20, "--n-trials", min=1, help="Most trainings to run."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.0,
                                            help="Start no trial after this many seconds."),
    sampler_seed: int = typer.Option(0, "--sampler-seed", help="Seed of Optuna's TPE sampler."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run.toml over the recipe's base; the searched "
                                          "settings it sets are not searched."),
    preset: Optional[str] = PRESET_OPTION,
    dataset: Optional[str] = DATASET_OPTION,
    data_dir: Optional[str] = DATA_DIR_OPTION,
    users: Optional[str] = USERS_OPTION,
    items: Optional[str] = ITEMS_OPTION,
    column: List[str] = COLUMN_OPTION,
    attribute: List[str] = ATTRIBUTE_OPTION,
    rating_scale: Optional[str] = RATING_SCALE_OPTION,
    protocol: Optional[str] = PROTOCOL_OPTION,
    split_dir: Optional[str] = SPLIT_DIR_OPTION,
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs of each trial."),
    patience: Optional[int] = typer.Option(None, help="Epochs without validation improvement before a trial stops."),
    seed: Optional[int] = typer.Option(None, help="Seed of the split and of every trial's training."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what --out already holds."),
) -> None:
    """Search outer lr, factors, item ids, id dropout, query loss and L2 with Optuna, scored like the recipe
    (the validation K-curve; test users are never seen). Train the best: metarec train --config OUT/best.toml."""
    with errors():
        from metarec.cli.train import check_run_folder
        from metarec.errors import require_extra
        from metarec.meta.recipe import load_toml_values, preset_dict
        from metarec.meta.tune import explicit_tune_settings, tune as run_tune, write_tune

        optuna = require_extra("optuna", "tune", "metarec tune")
        optuna.logging.disable_default_handler()  # its trial lines go through logging (shown with -v)
        optuna.logging.enable_propagation()
        layers = ([preset_dict(preset)] if preset and preset != "recipe" else []) + \
                 ([load_toml_values(config)] if config else [])
        check_run_folder(out, False, overwrite, [])
        data = data_overrides(dataset, data_dir, users, items, column, attribute, rating_scale)
        cfg, fixed = layered_run_config(config, preset, None, None, data,
                                        dict(protocol=protocol, seed=seed, split_dir=split_dir))
        cfg = cfg.override("train", epochs=epochs, patience=patience, seed=seed)
        process_threads(cfg.train.threads)
        fixed = (*fixed, *(name for layer in layers for name in explicit_tune_settings(layer)))
        with progress_bars() as progress:
            split = split_of(cfg)
            bar = progress.add_task("tuning on validation users (trainings)", total=n_trials)

            def step(description: str, done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            result = run_tune(split, cfg, n_trials=n_trials, timeout=timeout, sampler_seed=sampler_seed,
                              fixed=fixed, progress=step)
        paths = write_tune(result, out)
        best = result.best
        console.print("best (chosen on validation users): "
                      + ", ".join(f"{k} = {v}" for k, v in best["settings"].items()), highlight=False)
        console.print(f"trial {best['number']}: validation score {best['value']:.4f} ({len(result.trials)} trials); "
                      f"wrote {paths['json']} and {paths['toml']}", highlight=False)
