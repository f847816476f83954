"""Training metrics sent to experiment trackers: TensorBoard and MLflow behind one small interface.

Why a hook and not trainer code: the trainer already writes every epoch's record (train loss, validation
MAE per scenario, the K-curve points) to ``metrics.jsonl`` and hands each one to its caller; a logger
only forwards those records, so trackers stay optional extras and the trainer never imports them.
``metarec train --log-to tensorboard --log-to mlflow`` builds one with :func:`make_logger`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from metarec.errors import ConfigError, require_extra

log = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "mlflow")


@runtime_checkable
class MetricsLogger(Protocol):
    """Receives a run's settings once and each epoch's record (a ``metrics.jsonl`` line) as it is made."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_epoch(self, record: Mapping[str, Any]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of an epoch's record, ``epoch`` itself aside (it is the step)."""
    return {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def flat_params(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"meta": {"outer_lr": 0.003}}`` as ``{"meta.outer_lr": 0.003}``: trackers take flat parameters."""
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


class TensorBoardLogger:
    """Scalars under ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``), one step per epoch."""

    def __init__(self, log_dir: str | Path) -> None:
        require_extra("tensorboard", "tensorboard", "--log-to tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in flat_params(params).items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + rows, 0)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in scalars(record).items():
            tag = f"validation/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a run watched live shows each epoch as it ends

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run per training: its settings as parameters, each epoch's numbers as metrics.

    Tracking goes to ``MLFLOW_TRACKING_URI`` when set, else to a SQLite store in ``RUN/mlruns`` (MLflow 3
    refuses its old plain-file store by default); ``mlflow ui --backend-store-uri sqlite:///RUN/mlruns/mlflow.db``
    shows it. The client API is used, not ``mlflow.start_run``, so no global active run is left behind."""

    def __init__(self, run_dir: str | Path, experiment: str | None = None, run_name: str | None = None) -> None:
        require_extra("mlflow", "mlflow", "--log-to mlflow")
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            store = (run_dir / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "metarec"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name, artifact_location=artifacts)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name or run_dir.name).info.run_id
        self.tracking_uri = uri
        log.info("MLflow run %s in %s", self.run_id, uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(k, str(v)[:6000]) for k, v in flat_params(params).items()]
        self.client.log_batch(self.run_id, params=entries)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars(record).items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class Loggers:
    """Every chosen logger as one (none: it does nothing); a context manager that closes them, marking a
    tracker's run failed when training raised."""

    def __init__(self, loggers: Sequence[MetricsLogger] = ()) -> None:
        self.loggers = list(loggers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Forward one epoch's record; the initialisation's (epoch -1, no training loss) is not sent."""
        if int(record.get("epoch", -1)) < 0:
            return
        for logger in self.loggers:
            logger.log_epoch(record)

    def log_history(self, history: Iterable[Mapping[str, Any]]) -> None:
        """Records of a training that ran before the loggers saw it (the recipe trains in memory)."""
        for record in history:
            self.log_epoch(record)

    def close(self, failed: bool = False) -> None:
        for logger in self.loggers:
            logger.close(failed)

    def __enter__(self) -> "Loggers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def logger_names(values: Iterable[str]) -> list[str]:
    """``--log-to`` values (repeated or comma-separated) as known logger names, each once."""
    names = [v.strip().lower() for value in values for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(LOGGERS))
    if unknown:
        raise ConfigError(f"unknown logger(s) {unknown}; known: {', '.join(LOGGERS)}")
    return list(dict.fromkeys(names))


def make_logger(names: Iterable[str], run_dir: str | Path) -> Loggers:
    """The loggers ``names`` asks for, writing beside the run in ``run_dir``; a tracker that is not
    installed fails here, in one line naming its extra, before any training."""
    run_dir = Path(run_dir)
    made: list[MetricsLogger] = []
    try:
        for name in logger_names(names):
            made.append(TensorBoardLogger(run_dir / "tensorboard") if name == "tensorboard" else MLflowLogger(run_dir))
    except BaseException:
        Loggers(made).close(failed=True)
        raise
    return Loggers(made)
