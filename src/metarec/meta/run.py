"""A training run's full configuration (data, split, model, meta-learning, training), as TOML."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig
from metarec.models.config import ModelConfig
from metarec.tasks.splits import SplitConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop's schedule: epochs over meta-train users, early stopping on validation users only.

    ``pretrain_epochs`` first trains the model as one global model (every rating of the meta-train
    users, no inner loop) and starts meta-training from there: item representations learn from plain
    supervision, meta-training then shapes the initialisation for adaptation.

    ``resample_query`` draws a fresh random support / query partition of every meta-train task each
    epoch (same sizes): over the epochs every rating is a query rating, so the outer loss (and the item
    representations it trains) sees all the meta-train ratings instead of a fixed tenth of them.
    """

    epochs: int = 30
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    eval_batch_size: int = 512
    checkpoint_every: int = 1
    pretrain_epochs: int = 0
    resample_query: bool = False
    average_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.patience < 1 or self.pretrain_epochs < 0:
            raise ConfigError("epochs and pretrain_epochs must be >= 0 and patience >= 1")
        if not 0.0 <= self.average_decay < 1.0:
            raise ConfigError(f"average_decay must be in [0, 1), got {self.average_decay}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "ml-100k"
    data_dir: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; its dict form is written to the run folder as ``config.toml``."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("data", "split", "model", "meta", "train")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.SECTIONS:
            section = asdict(getattr(self, name))
            out[name] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in section.items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Mapping[str, Any]]) -> "RunConfig":
        unknown = set(obj) - set(cls.SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)}; expected {list(cls.SECTIONS)}")
        kinds = {"data": DataConfig, "split": SplitConfig, "model": ModelConfig, "meta": MetaConfig, "train": TrainConfig}
        parts = {}
        for name, kind in kinds.items():
            values = dict(obj.get(name, {}))
            allowed = {f.name for f in fields(kind)}
            bad = set(values) - allowed
            if bad:
                raise ConfigError(f"[{name}] has unknown key(s) {sorted(bad)}; allowed: {sorted(allowed)}")
            if "hidden" in values:
                values["hidden"] = tuple(values["hidden"])
            try:
                parts[name] = kind(**values)
            except TypeError as exc:
                raise ConfigError(f"[{name}]: {exc}") from None
        return cls(**parts)

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            return cls.from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def override(self, section: str, **values: Any) -> "RunConfig":
        """A copy with ``values`` set in ``section`` (None values are ignored: flag not given)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        merged = {**self.to_dict()[section], **values}
        return self.from_dict({**self.to_dict(), section: merged})

    @classmethod
    def preset(cls, model: str, algorithm: str | None = None) -> "RunConfig":
        """Defaults for a model kind; ``melu`` also takes MeLU's published learning rates."""
        if model == "melu":
            meta = MetaConfig.melu()
            if algorithm is not None:
                meta = replace(meta, algorithm=algorithm)
            return cls(model=ModelConfig.melu(), meta=meta)
        meta = MetaConfig() if algorithm is None else MetaConfig(algorithm=algorithm)
        if meta.algorithm == "reptile":
            meta = replace(meta, adapt="all", inner_steps=3)
        return cls(model=ModelConfig(kind=model), meta=meta)
