"""A training run's full configuration (data, split, model, meta-learning, training), as TOML."""

from __future__ import annotations

import functools
import sys
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig
from metarec.models.config import ModelConfig
from metarec.tasks.config import SplitConfig

if TYPE_CHECKING:  # imported when a config has an [implicit] section: it pulls in torch
    from metarec.meta.implicit import ImplicitTrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


MAX_MEMBERS = 16  # an ensemble's members (train.members): each costs a training and an adaptation per request


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop's schedule: epochs over meta-train users, early stopping on validation users only.

    ``pretrain_epochs`` first trains the model as one global model (every rating of the meta-train
    users, no inner loop) and starts meta-training from there: item representations learn from plain
    supervision, meta-training then shapes the initialisation for adaptation.

    ``resample_query`` draws a fresh random support / query partition of every meta-train task each
    epoch (same sizes): over the epochs every rating is a query rating, so the outer loss (and the item
    representations it trains) sees all the meta-train ratings instead of a fixed tenth of them.

    ``average_epochs`` sets ``average_decay`` from the data: ``1 - 1 / (average_epochs x meta-batches per
    epoch)``, a running average over about that many epochs whatever the dataset's size (0: use
    ``average_decay`` as given).

    ``short_support_fraction`` cuts, each epoch, the support of that fraction of meta-train tasks to K
    ratings drawn log-uniformly from 1..``short_support_max`` (the cut ratings join the query): the outer
    loss then measures what a newcomer's first ratings give, not only what a long history gives.

    ``select_on`` is the validation score that early stopping and model selection use: ``all`` the query
    MAE with each validation task's whole support; ``k-curve`` the mean of that and of the query MAE with
    each validation task's support cut to K ratings, for every K in ``selection_support_sizes``.
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
    average_epochs: float = 0.0
    short_support_fraction: float = 0.0
    short_support_max: int = 20
    select_on: Literal["all", "k-curve"] = "all"
    selection_support_sizes: tuple[int, ...] = (1, 3, 5, 10)
    members: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.members <= MAX_MEMBERS:
            raise ConfigError(f"members must be in 1..{MAX_MEMBERS}, got {self.members}")
        if self.epochs < 0 or self.patience < 1 or self.pretrain_epochs < 0:
            raise ConfigError("epochs and pretrain_epochs must be >= 0 and patience >= 1")
        if not 0.0 <= self.average_decay < 1.0:
            raise ConfigError(f"average_decay must be in [0, 1), got {self.average_decay}")
        if self.average_epochs < 0:
            raise ConfigError(f"average_epochs must be >= 0, got {self.average_epochs}")
        if self.average_epochs and self.average_decay:
            raise ConfigError("set average_epochs or average_decay, not both")
        if not 0.0 <= self.short_support_fraction <= 1.0:
            raise ConfigError(f"short_support_fraction must be in [0, 1], got {self.short_support_fraction}")
        if self.short_support_max < 1:
            raise ConfigError(f"short_support_max must be >= 1, got {self.short_support_max}")
        if self.select_on not in ("all", "k-curve"):
            raise ConfigError(f"select_on must be 'all' or 'k-curve', got {self.select_on!r}")
        sizes = tuple(int(k) for k in self.selection_support_sizes)
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"selection_support_sizes must be a non-empty list of K >= 1, got {list(sizes)}")
        object.__setattr__(self, "selection_support_sizes", sizes)


@dataclass(frozen=True)
class DataConfig:
    """Where the ratings come from: a registered name (``data_dir``: the folder holding it), a saved
    dataset folder, RecBole atomic files, or your own interactions table (CSV / TSV / Parquet) with
    optional ``users`` / ``items`` attribute tables. For a table: ``columns`` maps the roles ``user``,
    ``item``, ``rating``, ``timestamp`` to its column names; ``attributes`` sets a column's kind
    (``categorical``, ``multi``, ``numeric``, ``text``; ``users.x`` / ``items.x`` for one table only) where
    the guess from its type is wrong - an integer-coded author id is a category, not a number;
    ``list_separator`` splits a ``multi`` column given as text; ``rating_scale`` is [low, high] (default:
    the observed range). ``feedback = "implicit"``: the data are read as positives with a confidence
    (:func:`metarec.data.implicit.to_implicit`; every interaction, or those rated >= ``positive_threshold``)."""

    dataset: str = "ml-100k"
    data_dir: str | None = None
    users: str | None = None
    items: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)
    list_separator: str = "|"
    rating_scale: tuple[float, float] | None = None
    feedback: Literal["explicit", "implicit"] = "explicit"
    positive_threshold: float | None = None

    def __post_init__(self) -> None:
        from metarec.data.schema import KINDS

        if self.feedback not in ("explicit", "implicit"):
            raise ConfigError(f"[data] feedback must be 'explicit' or 'implicit', got {self.feedback!r}")
        if self.positive_threshold is not None and self.feedback != "implicit":
            raise ConfigError("[data] positive_threshold applies to feedback = 'implicit' only")

        bad_roles = set(self.columns) - {"user", "item", "rating", "timestamp"}
        if bad_roles:
            raise ConfigError(f"[data] columns: unknown role(s) {sorted(bad_roles)}; roles: user, item, rating, timestamp")
        for column, kind in self.attributes.items():
            if kind not in KINDS:
                raise ConfigError(f"[data] attributes: {column} = {kind!r}; a kind is one of {', '.join(KINDS)}")
        if self.rating_scale is not None:
            if len(self.rating_scale) != 2 or not float(self.rating_scale[0]) < float(self.rating_scale[1]):
                raise ConfigError(f"[data] rating_scale must be [low, high] with low < high, got {list(self.rating_scale)}")
            object.__setattr__(self, "rating_scale", (float(self.rating_scale[0]), float(self.rating_scale[1])))
        object.__setattr__(self, "columns", dict(self.columns))
        object.__setattr__(self, "attributes", dict(self.attributes))

    @property
    def is_table(self) -> bool:
        """Whether this is a table the user brings (mapping and attribute kinds apply)."""
        return bool(self.users or self.items or self.columns or self.attributes) or Path(self.dataset).suffix.lower() in (
            ".csv", ".tsv", ".txt", ".parquet", ".pq")


# what [train] holds in an implicit run: its schedule is the [implicit] section
IMPLICIT_TRAIN_KEYS = ("seed", "device", "threads", "members")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; its dict form is written to the run folder as ``config.toml``.

    ``implicit``: the schedule of a run meta-trained on implicit feedback (``metarec train --feedback
    implicit``, :func:`metarec.meta.implicit.train_implicit`), None for ratings. Such a run reads its data
    with ``data.feedback = "implicit"`` and has ``model.implicit``; its ``[train]`` keeps only seed and device."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    implicit: "ImplicitTrainConfig | None" = None

    SECTIONS = ("data", "split", "model", "meta", "train")

    def __post_init__(self) -> None:
        if self.implicit is not None and not (self.model.implicit and self.data.feedback == "implicit"):
            raise ConfigError("an [implicit] section needs model.implicit = true and data.feedback = 'implicit'")

    @property
    def is_implicit(self) -> bool:
        """Whether the run was meta-trained on implicit feedback (positives ranked, no ratings predicted)."""
        return self.implicit is not None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The sections as plain values; an explicit run's as before implicit feedback existed (its
        ``data.feedback`` left out), so its config.toml is unchanged."""
        out = {}
        for name in self.SECTIONS:
            out[name] = _plain(asdict(getattr(self, name)))
        if self.data.feedback == "explicit":
            out["data"].pop("feedback", None)
        if self.implicit is not None:
            out["train"] = {k: v for k, v in out["train"].items() if k in IMPLICIT_TRAIN_KEYS}
            out["implicit"] = _plain(asdict(self.implicit))
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Mapping[str, Any]]) -> "RunConfig":
        unknown = set(obj) - {*cls.SECTIONS, "implicit"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)}; expected {[*cls.SECTIONS, 'implicit']}")
        kinds: dict[str, type] = {"data": DataConfig, "split": SplitConfig, "model": ModelConfig, "meta": MetaConfig,
                                  "train": TrainConfig}
        if "implicit" in obj:
            from metarec.meta.implicit import ImplicitTrainConfig

            kinds["implicit"] = ImplicitTrainConfig
        parts = {}
        for name, kind in kinds.items():
            values = dict(obj.get(name, {}))
            allowed = {f.name for f in fields(kind)}
            bad = set(values) - allowed
            if bad:
                raise ConfigError(f"[{name}] has unknown key(s) {sorted(bad)}; allowed: {sorted(allowed)}")
            try:
                parts[name] = kind(**typed_values(name, kind, values))
            except TypeError as exc:
                raise ConfigError(f"[{name}]: {exc}") from None
        if "implicit" in parts and set(obj.get("train", {})) - set(IMPLICIT_TRAIN_KEYS):
            extra = sorted(set(obj["train"]) - set(IMPLICIT_TRAIN_KEYS))
            raise ConfigError(f"[train] {extra}: an implicit run's schedule is its [implicit] section; "
                              f"[train] keeps only {list(IMPLICIT_TRAIN_KEYS)}")
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


def _plain(section: Mapping[str, Any]) -> dict[str, Any]:
    """A section's values for TOML: tuples as lists, unset (None) values and empty mappings left out."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in section.items()
            if v is not None and not (isinstance(v, dict) and not v)}


def typed_values(section: str, kind: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked against the field types of the dataclass ``kind`` (by pydantic: a TOML list
    becomes the tuple a field wants, 3 the float 3.0), so a wrong type is an error naming its section and
    key rather than a TypeError deep in training."""
    import pydantic

    hints = _field_types(kind)
    out = {}
    for key, value in values.items():
        try:
            out[key] = _adapter(hints[key]).validate_python(value)
        except pydantic.ValidationError as exc:
            problem = exc.errors()[0]
            where = "".join(f"[{p}]" for p in problem.get("loc", ()))
            raise ConfigError(f"[{section}] {key}{where} = {value!r}: {problem['msg']}") from None
    return out


@functools.lru_cache(maxsize=None)
def _field_types(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any):
    import pydantic

    return pydantic.TypeAdapter(annotation)
