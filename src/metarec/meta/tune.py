"""Hyperparameter search with Optuna, scored exactly as the automatic recipe scores its trials.

Why beside the recipe: the recipe (:mod:`metarec.meta.recipe`) tries 8 fixed candidates, enough for the
settings that differ most between datasets; a user with a time budget may want a wider, continuous
search (learning rate, factors, id dropout, L2, the few-shot parts). Every trial is trained by
:func:`metarec.meta.recipe.train_candidate` and scored by the trainer's own selection score (the
validation K-curve under the recipe's base), so a tuned configuration and the recipe's choice are
compared on one number, and test users are never seen. Optuna is the ``[tune]`` extra.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from metarec._io import write_json, write_text
from metarec.errors import ConfigError, require_extra
from metarec.meta.recipe import FEW_SHOT_PARTS_OFF, apply_setting, choose_history_scale, setting_of, train_candidate
from metarec.meta.run import RunConfig
from metarec.tasks.split import ColdStartSplit

log = logging.getLogger(__name__)

# (section, key, kind, values): "log" / "float" sample in [low, high] (log scale for "log"), "choice" among values
TUNE_SPACE: tuple[tuple[str, str, str, tuple[Any, ...]], ...] = (
    ("meta", "outer_lr", "log", (3e-4, 3e-2)),
    ("model", "factors", "choice", (16, 32, 64)),
    ("model", "item_ids", "choice", ("input", "residual", "none")),
    ("model", "item_id_dropout", "float", (0.0, 0.5)),
    ("meta", "query_loss", "choice", ("absolute", "squared")),
    ("meta", "l2", "log", (1e-6, 1e-3)),
    ("train", "few_shot_parts", "choice", ("on", "off")),
)
Progress = Callable[[str, int, int], None]  # (description, done, total)


@dataclass
class TuneResult:
    """The best configuration, every trial in the order run, and what the search covered."""

    config: RunConfig
    trials: list[dict[str, Any]]
    best: dict[str, Any]
    searched: tuple[str, ...]
    sampler_seed: int
    history_scales: dict[float, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"objective": f"validation score (train.select_on = {self.config.train.select_on!r}), lower is better; "
                             "validation users only",
                "searched": list(self.searched), "sampler": {"name": "TPE", "seed": self.sampler_seed},
                "best": self.best, "trials": self.trials,
                "history_scales": {str(k): v if math.isfinite(v) else None for k, v in self.history_scales.items()}}


def explicit_tune_settings(values: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    """The searched settings a TOML sets itself: the search leaves them as the file says."""
    out = []
    for section, key, _, _ in TUNE_SPACE:
        given = values.get(section, {})
        if (section, key) == ("train", "few_shot_parts"):  # set when the file sets any field it sets
            if any(field in values.get(part, {}) for part, fields in FEW_SHOT_PARTS_OFF.items() for field in fields):
                out.append(f"{section}.{key}")
            continue
        keys = ("item_id_embedding", "item_id_residual") if (section, key) == ("model", "item_ids") else (key,)
        if any(k in given for k in keys):
            out.append(f"{section}.{key}")
    return tuple(out)


def search_dimensions(split: ColdStartSplit, base: RunConfig, fixed: Sequence[str] = (),
                      space: Sequence[tuple[str, str, str, tuple[Any, ...]]] = TUNE_SPACE
                      ) -> list[tuple[str, str, str, tuple[Any, ...]]]:
    """The dimensions that can change something for ``base`` on ``split`` (factors and residual ids are
    neural-cf's; items without attributes keep their id vectors as input, as in the recipe)."""
    fixed = set(fixed)
    neural_cf = base.model.kind == "neural-cf"
    dims = []
    for section, key, kind, values in space:
        name = f"{section}.{key}"
        if name in fixed or (name == "model.factors" and not neural_cf):
            continue
        if name == "model.item_ids":
            if not split.dataset.item_schema:
                continue
            values = tuple(v for v in values if neural_cf or v != "residual")
        dims.append((section, key, kind, tuple(values)))
    return dims


def _suggest(trial: Any, name: str, kind: str, values: tuple[Any, ...]) -> Any:
    if kind == "choice":
        return trial.suggest_categorical(name, list(values))
    low, high = values
    return trial.suggest_float(name, float(low), float(high), log=(kind == "log"))


def tune(split: ColdStartSplit, base: RunConfig, *, n_trials: int = 20, timeout: float | None = None,
         sampler_seed: int = 0, fixed: Sequence[str] = (),
         space: Sequence[tuple[str, str, str, tuple[Any, ...]]] = TUNE_SPACE,
         progress: Progress | None = None) -> TuneResult:
    """Optuna (TPE, seeded) over ``space`` around ``base`` on ``split``'s validation users: at most
    ``n_trials`` trainings, and none started after ``timeout`` seconds. ``fixed``: ``"section.key"``
    names not to search. The best trial's history penalty multiple is then chosen as the recipe does."""
    optuna = require_extra("optuna", "tune", "metarec tune")
    if n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {n_trials}")
    if not any(len(tasks) for tasks in split.validation.values()):
        raise ConfigError(f"{split.dataset.name}: the split has no validation tasks to tune on "
                          "(raise split.val_user_fraction)")
    if not split.dataset.item_schema:
        base = apply_setting(base, "model", "item_ids", "input")
    dims = search_dimensions(split, base, fixed, space)
    kept: dict[str, Any] = {}  # the best trial's trainer (for the history multiple) and its config

    def objective(trial: Any) -> float:
        config = base
        for section, key, kind, values in dims:
            if (section, key) == ("model", "item_id_dropout") and not config.model.item_id_embedding:
                continue  # no id vectors to drop
            config = apply_setting(config, section, key, _suggest(trial, f"{section}.{key}", kind, values))
        settings = {f"{s}.{k}": setting_of(config, s, k) for s, k, _, _ in dims}
        result, trainer = train_candidate(config, split, settings)
        for name, value in (("best_epoch", result.best_epoch), ("epochs_run", result.epochs_run),
                            ("seconds", round(result.seconds, 2)), ("val_curve", result.val_curve)):
            trial.set_user_attr(name, value)
        if math.isfinite(result.val_score) and result.val_score < kept.get("score", math.inf):
            kept.update(score=result.val_score, trainer=trainer, config=config, number=trial.number)
        return result.val_score

    def report(study: Any, trial: Any) -> None:
        if progress:
            progress("tuning on validation users", len(study.trials), n_trials)

    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    study = optuna.create_study(direction="minimize", sampler=sampler, study_name="metarec")
    study.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=[report])
    if "trainer" not in kept:
        raise ConfigError("no tuning trial reached a finite validation score")
    config, scales = kept["config"], {}
    if "model.history_penalty_scale" not in set(fixed):
        scales = choose_history_scale(kept["trainer"], split)
        if scales:
            config = config.override("model", history_penalty_scale=kept["trainer"].learner.model.history_penalty_scale)
    trials = [{"number": t.number, "state": t.state.name, "value": _finite(t.value), "params": dict(t.params),
               **t.user_attrs} for t in study.trials]
    best = next(t for t in trials if t["number"] == kept["number"])
    settings = {f"{s}.{k}": setting_of(config, s, k) for s, k, _, _ in dims}
    log.info("tuned: %s (validation score %.4f after %d trials)", settings, kept["score"], len(trials))
    return TuneResult(config, trials, {**best, "settings": settings}, tuple(f"{s}.{k}" for s, k, _, _ in dims),
                      sampler_seed, scales)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def write_tune(result: TuneResult, out: str | Path) -> dict[str, Path]:
    """``out/tune.json`` (every trial, the best) and ``out/best.toml``, the best configuration as a file
    ``metarec train --config`` takes (its searched settings are then fixed, so the recipe does not
    search them again)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "tune.json", result.to_dict())
    header = (f"# chosen by metarec tune on validation users: trial {result.best['number']} of {len(result.trials)}, "
              f"validation score {result.best['value']:.4f}\n# train it: metarec train --config best.toml --out RUNDIR\n")
    write_text(out / "best.toml", header + result.config.to_toml())
    return {"json": out / "tune.json", "toml": out / "best.toml"}
