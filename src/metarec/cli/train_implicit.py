"""``metarec train --feedback implicit``: the implicit benchmark's meta-learner trained on one split, written
as a run folder that ``metarec recommend`` and ``metarec serve`` load (:mod:`metarec.eval.implicit.train_run`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from metarec.cli.options import console, progress_bars
from metarec.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# what --config may set for an implicit run: the data, and the recipe's model / meta / implicit overrides
CONFIG_SECTIONS = ("data", "model", "meta", "implicit")


def refused_flags(given: Mapping[str, bool]) -> None:
    """Flags that mean nothing for an implicit run are an error naming them, never silently ignored."""
    flags = [flag for flag, used in given.items() if used]
    if flags:
        raise ConfigError(f"{', '.join(flags)}: not used by --feedback implicit (it trains the implicit benchmark's "
                          "meta-learner, selected on validation nDCG@20; --config sets its [model], [meta] and "
                          "[implicit] sections)")


def config_sections(path: Optional[Path]) -> dict[str, dict[str, Any]]:
    """A --config run.toml's sections an implicit run reads (others are an error naming them)."""
    if path is None:
        return {}
    try:
        obj = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    other = sorted(set(obj) - set(CONFIG_SECTIONS))
    if other:
        raise ConfigError(f"{path}: section(s) {other} do not apply to --feedback implicit; it reads "
                          f"{list(CONFIG_SECTIONS)}")
    return {k: dict(v) for k, v in obj.items()}


def epoch_label(metric: str, record: Mapping[str, Any] | None) -> str:
    """The epochs bar's label after an epoch: its validation score (higher is better)."""
    if not record:
        return "epochs"
    return f"epochs (epoch {record['epoch']}: validation {metric} {record['val_score']:.4f})"


def train_implicit(out: Path, data: dict, positive_threshold: Optional[float], config: Optional[Path],
                   overrides: dict[str, dict[str, Any]], protocol: Optional[str], seed: Optional[int],
                   log_to: list[str], members: Optional[int] = None) -> None:
    """Load the positives, fit, write ``out`` and say where the run went and how it scored."""
    from metarec.eval.implicit.config import ImplicitBenchmarkConfig
    from metarec.eval.implicit.train_run import checked_overrides, train_implicit_run, write_implicit_run
    from metarec.meta.loggers import make_logger
    from metarec.meta.run import DataConfig

    sections = config_sections(config)
    for section in ("model", "meta", "implicit"):  # flags win over the config file
        merged = {**sections.get(section, {}), **overrides.get(section, {})}
        if merged:
            overrides[section] = merged
    checked_overrides(overrides)  # before minutes of loading and training
    values = {**sections.get("data", {}), **data, "feedback": "implicit"}
    if positive_threshold is not None:
        values["positive_threshold"] = positive_threshold
    try:
        data_config = DataConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"[data]: {exc}") from None
    benchmark = ImplicitBenchmarkConfig()
    metric = benchmark.selection_metric
    with progress_bars() as progress, make_logger(log_to, out) as loggers:
        bar = progress.add_task("meta-training (implicit)", total=None)
        epochs_bar = progress.add_task("epochs", total=None)

        def batches(stage: str, done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        def epoch(record: dict) -> None:
            progress.update(epochs_bar, completed=record["epoch"] + 1, total=record["epochs"],
                            description=epoch_label(metric, record))

        if seed is None:  # the config file's [implicit] seed, else 0
            seed = int(overrides.get("implicit", {}).get("seed", 0))
        run = train_implicit_run(data_config, seed=seed, protocol=protocol, overrides=overrides, benchmark=benchmark,
                                 progress=batches, on_epoch=epoch, run_dir=out, members=members or 1)
        write_implicit_run(run, out)
        loggers.log_params(run.config.to_dict())
        loggers.log_history(run.history)
    report(run, out, metric)


def resume_implicit(out: Path, log_to: list[str]) -> None:
    """Continue the implicit run in ``out`` from ``last/`` with the settings of its ``config.toml``."""
    from dataclasses import asdict

    from metarec.eval.implicit.config import ImplicitBenchmarkConfig
    from metarec.eval.implicit.train_run import train_implicit_run, write_implicit_run
    from metarec.meta.loggers import make_logger
    from metarec.meta.run import RunConfig

    saved = RunConfig.from_toml(out / "config.toml")
    if not saved.is_implicit:
        raise ConfigError(f"{out}: an explicit run (no [implicit] section); resume it without --feedback implicit")
    assert saved.implicit is not None
    overrides = {"model": asdict(saved.model), "meta": asdict(saved.meta), "implicit": asdict(saved.implicit)}
    benchmark = ImplicitBenchmarkConfig()
    metric = benchmark.selection_metric
    with progress_bars() as progress, make_logger(log_to, out) as loggers:
        bar = progress.add_task("meta-training (implicit, resumed)", total=None)
        epochs_bar = progress.add_task("epochs", total=saved.implicit.epochs)
        run = train_implicit_run(
            saved.data, seed=saved.implicit.seed, protocol=saved.split.protocol, overrides=overrides,
            benchmark=benchmark, progress=lambda stage, done, total: progress.update(bar, completed=done, total=total),
            on_epoch=lambda record: progress.update(epochs_bar, completed=record["epoch"] + 1,
                                                    description=epoch_label(metric, record)),
            run_dir=out, resume=True, members=saved.train.members)
        write_implicit_run(run, out)
        loggers.log_params(run.config.to_dict())
        loggers.log_history(run.history)
    report(run, out, metric)


def report(run, out: Path, metric: str) -> None:
    """The one line a finished implicit run prints."""
    if run.best_epoch < 0:
        console.print(f"no epoch trained; run folder {out} holds the untrained model", highlight=False)
        return
    members = run.config.train.members
    ensemble = f", an ensemble of {members} meta-learners (the others in {out / 'members'})" if members > 1 else ""
    console.print(f"best epoch {run.best_epoch}: validation {metric} {run.best_score:.4f} "
                  f"({len(run.history)} epochs){ensemble}; run folder {out}", highlight=False)
