"""One automatic recipe: the settings that differ between datasets, chosen on validation users only.

Why: the settings that made the meta-learner win on one dataset (its outer learning rate, whether warm
items get id vectors and how, the outer loss) lose on another. A user who brings their own data should
not have to find them by hand, and a benchmark should not be won by settings picked per dataset by a
person. So :func:`choose_recipe` starts from one base configuration (``presets/recipe.toml``: neural CF
whose user offset is folded in by a ridge solve with a learned, support-size dependent penalty;
meta-trained on supports cut to newcomer lengths; selected on the validation K-curve) and searches a
small, fixed space around it on the split's validation users:

* ``meta.outer_lr`` (how fast the item side can move in the meta-batches a dataset has);
* ``model.item_ids``: warm items' id vectors fed into the item tower, added to its output, or none;
* ``model.item_id_dropout``: a warm item's id vector dropped in training (DropoutNet), so the attributes
  alone learn to predict - all a new item has - or kept;
* ``meta.query_loss``: the absolute error MAE measures, or the squared error;
* ``train.few_shot_parts``: the base's two few-shot parts (meta-train supports cut to newcomer lengths, and
  the fold-in penalty's support-size slope at a fast rate) on, or both off: they buy new users' first
  ratings and cost the whole support and both new, and on ML-1M + IMDb's validation users only both off
  together score better (one at a time neither moves the score).

The search is greedy, one dimension at a time in that order, each from the best so far: 3 + 2 + 1 + 1 + 1 =
8 trainings (7 when the items end up without id vectors). Every trial is scored by the trainer's own
selection score (``train.select_on = "k-curve"``: the mean validation MAE over K = 1, 3, 5, 10 support
ratings and the whole support), so the recipe and early stopping optimise the same thing; test users are never seen. Settings fixed by the caller (a TOML
that sets them, or ``fixed``) are not searched.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from metarec.errors import ConfigError
from metarec.meta.presets import (load_toml_values, preset, preset_dict, preset_names, preset_summary,  # noqa: F401
                                   recipe_base, recipe_base_dict)
from metarec.meta.run import RunConfig
from metarec.meta.search_journal import SearchJournal
from metarec.meta.trainer import Trainer
from metarec.tasks.split import ColdStartSplit

log = logging.getLogger(__name__)

# (section, key, candidates); the first candidate is the base's value
ITEM_ID_MODES = {"input": dict(item_id_embedding=True, item_id_residual=False),
                 "residual": dict(item_id_embedding=True, item_id_residual=True),
                 "none": dict(item_id_embedding=False, item_id_residual=False)}
SEARCH_SPACE: tuple[tuple[str, str, tuple[Any, ...]], ...] = (
    ("meta", "outer_lr", (0.003, 0.001, 0.01)),
    ("model", "item_ids", ("input", "residual", "none")),
    ("model", "item_id_dropout", (0.3, 0.0)),  # searched only where items have id vectors
    ("meta", "query_loss", ("absolute", "squared")),
    ("train", "few_shot_parts", ("on", "off")),
)
# train.few_shot_parts = "off": the fields it sets; "on" takes them from the recipe's base
FEW_SHOT_PARTS_OFF = {"train": {"short_support_fraction": 0.0},
                      "model": {"penalty_by_support_size": False, "penalty_rate": 1.0}}
# the history's penalty multiple (ModelConfig.history_penalty_scale), chosen after training: it changes
# nothing the training sees, only how a known user's history meets a new-item support set
HISTORY_SCALES = (1.0, 1.5, 2.0, 4.0, 8.0)
# fewer tasks than this choose nothing: the multiple keeps its configured value (under MetaHIN's splits one
# validation user's new-item ratings are left once the test tasks' are excluded)
MIN_HISTORY_CHOICE_TASKS = 20
Progress = Callable[[str, int, int], None]  # (description, done, total)


def item_id_mode(config: RunConfig) -> str:
    """The ``model.item_ids`` value a configuration has (see ``ITEM_ID_MODES``)."""
    if not config.model.item_id_embedding:
        return "none"
    return "residual" if config.model.item_id_residual else "input"


def few_shot_parts_fields(value: str) -> dict[str, dict[str, Any]]:
    """The fields ``train.few_shot_parts`` sets: ``"off"`` switches both parts off, ``"on"`` is the
    recipe base's values of the same fields."""
    if value == "off":
        return FEW_SHOT_PARTS_OFF
    if value == "on":
        base = recipe_base()
        return {section: {key: getattr(getattr(base, section), key) for key in fields}
                for section, fields in FEW_SHOT_PARTS_OFF.items()}
    raise ConfigError(f"train.few_shot_parts must be 'on' or 'off', got {value!r}")


def few_shot_parts(config: RunConfig) -> str:
    """The ``train.few_shot_parts`` value a configuration has: ``"off"`` when neither part is on."""
    on = config.train.short_support_fraction > 0 or config.model.penalty_by_support_size
    return "on" if on else "off"


def apply_setting(config: RunConfig, section: str, key: str, value: Any) -> RunConfig:
    """``config`` with one searched setting; ``model.item_ids`` sets the two item-id fields,
    ``train.few_shot_parts`` the short supports and the penalty's slope and rate."""
    if (section, key) == ("model", "item_ids"):
        if value not in ITEM_ID_MODES:
            raise ConfigError(f"model.item_ids must be one of {sorted(ITEM_ID_MODES)}, got {value!r}")
        return config.override("model", **ITEM_ID_MODES[value])
    if (section, key) == ("train", "few_shot_parts"):
        for part, fields in few_shot_parts_fields(value).items():
            config = config.override(part, **fields)
        return config
    return config.override(section, **{key: value})


def setting_of(config: RunConfig, section: str, key: str) -> Any:
    if (section, key) == ("model", "item_ids"):
        return item_id_mode(config)
    if (section, key) == ("train", "few_shot_parts"):
        return few_shot_parts(config)
    return getattr(getattr(config, section), key)


@dataclass
class RecipeTrial:
    """One trained candidate: its searched settings, the selection score it reached, and its epochs."""

    settings: dict[str, Any]
    val_score: float
    best_epoch: int
    epochs_run: int
    seconds: float
    val_curve: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": dict(self.settings), "val_score": self.val_score, "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "seconds": round(self.seconds, 2), "val_curve": dict(self.val_curve)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "RecipeTrial":
        """A trial :meth:`to_dict` wrote (a search journal's record; null scores are NaN again)."""
        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        return cls(dict(record["settings"]), number(record["val_score"]), int(record["best_epoch"]),
                   int(record["epochs_run"]), float(record["seconds"]),
                   {k: number(v) for k, v in dict(record.get("val_curve", {})).items()})


@dataclass
class RecipeResult:
    """The chosen configuration, every trial in the order run, and the chosen trial's trained trainer;
    ``history_scales``: each candidate history penalty multiple's MAE on the new-item tasks it is chosen on
    (heavy users', else validation users': :meth:`ColdStartSplit.history_choice_tasks`)."""

    config: RunConfig
    trials: list[RecipeTrial]
    trainer: Trainer
    searched: tuple[str, ...]
    history_scales: dict[float, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        best = min(self.trials, key=lambda t: t.val_score)
        chosen = dict(best.settings)
        if self.history_scales:
            chosen["model.history_penalty_scale"] = self.config.model.history_penalty_scale
        return {"searched": list(self.searched), "chosen": chosen, "val_score": best.val_score,
                "selection": self.config.train.select_on, "trials": [t.to_dict() for t in self.trials],
                "history_scales": {str(k): v if math.isfinite(v) else None for k, v in self.history_scales.items()},
                "rule": "greedy, one setting at a time, each from the best so far; validation users only"}


def train_candidate(config: RunConfig, split: ColdStartSplit, settings: Mapping[str, Any]) -> tuple[RecipeTrial, Trainer]:
    """Train one candidate in memory and score it as the trainer selects (``train.select_on``: the
    validation K-curve for the recipe's base), validation users only; the recipe and ``metarec tune``
    both score their trials here, so their numbers are the same quantity."""
    started = time.perf_counter()
    trainer = Trainer(config, split=split)
    result = trainer.fit()
    best = next((h for h in trainer.history if h.get("epoch") == result.best_epoch), {})
    curve = {k: float(v) for k, v in best.items() if k.startswith("val_") and k.endswith("_mae")}
    trial = RecipeTrial(dict(settings), float(result.best_val_mae), result.best_epoch, result.epochs_run,
                        time.perf_counter() - started, curve)
    log.info("trial %s: validation score %.4f (best epoch %d)", trial.settings, trial.val_score, trial.best_epoch)
    return trial, trainer


def choose_recipe(split: ColdStartSplit, base: RunConfig | None = None, *, fixed: Sequence[str] = (),
                  space: Sequence[tuple[str, str, tuple[Any, ...]]] = SEARCH_SPACE,
                  progress: Progress | None = None, journal: "SearchJournal | None" = None) -> RecipeResult:
    """Search ``space`` around ``base`` (default: :func:`recipe_base`) on ``split``'s validation users.

    ``fixed``: ``"section.key"`` names not to search (the caller's own settings). Returns the best
    trial's configuration and its trained :class:`Trainer` (its learner holds the selected epoch's
    parameters after ``restore_best()``), so the chosen model need not be trained again. ``journal``:
    each finished trial is recorded there, and trials it already records are replayed, not trained
    (:mod:`metarec.meta.search_journal`: a killed search resumes)."""
    config = base or recipe_base()
    if not any(len(split.validation.get(name, ())) for name in split.validation):
        raise ConfigError(f"{split.dataset.name}: the split has no validation tasks to choose the recipe on "
                          "(raise split.val_user_fraction, or pass a full configuration and no search)")
    if journal is not None:  # before the id-only adjustment below: what the caller asked for is recorded
        journal.open(config, fixed, split)
    if not split.dataset.item_schema and "model.item_ids" not in set(fixed):
        # id-only items: the id vector is all an item has (residual ids and no ids need attributes)
        log.info("%s: items have no attributes; their id vectors are the item tower's input", split.dataset.name)
        config = apply_setting(config, "model", "item_ids", "input")
        fixed = (*fixed, "model.item_ids")
    dims = [(s, k, tuple(v)) for s, k, v in space if f"{s}.{k}" not in set(fixed)]
    total = sum(len(v) - 1 for _, _, v in dims) + 1
    trials: list[RecipeTrial] = []
    tried: set[tuple] = set()

    def run(cfg: RunConfig) -> tuple[RecipeTrial, Trainer | None] | None:
        """Train one candidate (None: already tried - it is the current best). A trial the journal records
        is replayed: its record, and no trainer (the best one's is restored from the journal at the end)."""
        key = tuple(setting_of(cfg, s, k) for s, k, _ in dims)
        if key in tried:
            return None
        tried.add(key)
        settings = {f"{s}.{k}": setting_of(cfg, s, k) for s, k, _ in dims}
        if progress:
            progress("choosing the recipe on validation users", len(trials), total)
        index = len(trials)
        record = journal.replay(index, settings) if journal is not None else None
        if record is not None:
            log.info("trial %s: replayed from %s", settings, journal.folder)  # type: ignore[union-attr]
            trial, trainer = RecipeTrial.from_dict(record), None
        else:
            trial, trainer = train_candidate(cfg, split, settings)
            if journal is not None:
                journal.record(index, trial.to_dict(), trainer,
                               best=not trials or trial.val_score < min(t.val_score for t in trials))
        trials.append(trial)
        return trial, trainer

    first = run(config)
    assert first is not None  # nothing tried yet
    (best_trial, best_trainer), best_index = first, 0
    for section, key, values in dims:
        if not _relevant(config, section, key):
            continue
        for value in values:
            candidate = apply_setting(config, section, key, value)
            outcome = run(candidate)
            if outcome is not None and outcome[0].val_score < best_trial.val_score:
                (best_trial, best_trainer), config, best_index = outcome, candidate, len(trials) - 1
    if best_trainer is None:  # the best trial was replayed: its trained run is the journal's
        assert journal is not None
        best_trainer = journal.trainer(best_index, config, split)
    scales: dict[float, float] = {}
    if "model.history_penalty_scale" not in set(fixed):
        scales = choose_history_scale(best_trainer, split)
        if scales:
            scale = best_trainer.learner.model.history_penalty_scale  # the best finite one
            config = config.override("model", history_penalty_scale=scale)
            best_trainer.config = config
    if progress:
        progress("choosing the recipe on validation users", total, total)
    log.info("recipe chosen: %s (validation score %.4f)", best_trial.settings, best_trial.val_score)
    result = RecipeResult(config, trials, best_trainer, tuple(f"{s}.{k}" for s, k, _ in dims), scales)
    summary = result.to_dict()  # kept in the checkpoints' state, for the model card
    best_trainer.state["recipe"] = {"chosen": summary["chosen"], "val_score": summary["val_score"],
                                    "trials": len(trials), "searched": summary["searched"]}
    return result


def choose_history_scale(trainer: Trainer, split: ColdStartSplit, candidates: Sequence[float] = HISTORY_SCALES,
                         min_tasks: int = MIN_HISTORY_CHOICE_TASKS) -> dict[float, float]:
    """{scale: MAE} of the trained model on known users' new-item tasks that no test task uses
    (:meth:`ColdStartSplit.history_choice_tasks`: the heavy users', or where there are none - published
    splits - the validation users' new-item ratings with their old-item ratings as the history), each
    adapted with the history as the prior (the benchmark's rule) under that multiple of the learned
    penalty; the model keeps the best. Empty (nothing chosen) for a model without the fold-in, or a split
    with fewer than ``min_tasks`` such tasks."""
    learner = trainer.restore_best()
    model = learner.model
    found = split.history_choice_tasks() if getattr(model, "fold_in", False) else None
    if found is None:
        return {}
    source, tasks = found
    if len(tasks) < min_tasks:
        log.info("history penalty scale: %d %s' new-item tasks (fewer than %d) choose nothing; kept %g",
                 len(tasks), source.replace("_", " "), min_tasks, model.history_penalty_scale)
        return {}
    out: dict[float, float] = {}
    for scale in candidates:
        model.history_penalty_scale = float(scale)
        pred = learner.predict_tasks(tasks)
        out[float(scale)] = float(abs(pred - tasks.query_rating).mean())
    # a multiple whose solve is not finite on some task (a near-singular system where the learned penalty
    # is tiny) is never chosen; if none is finite the model keeps its configured multiple
    finite = {scale: mae for scale, mae in out.items() if math.isfinite(mae)}
    if not finite:
        model.history_penalty_scale = trainer.config.model.history_penalty_scale
        log.warning("history penalty scale: no candidate gives finite predictions; kept %g",
                    model.history_penalty_scale)
        return {}
    best = min(finite, key=finite.get)
    model.history_penalty_scale = best
    log.info("history penalty scale %g (%s' new items MAE %s)", best, source.replace("_", " "), out)
    return out


def _relevant(config: RunConfig, section: str, key: str) -> bool:
    """Whether a searched setting changes anything under ``config`` (id dropout needs id vectors)."""
    return not ((section, key) == ("model", "item_id_dropout") and not config.model.item_id_embedding)


def explicit_settings(toml_values: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    """The searched settings a TOML sets itself (``model.item_ids`` counts as set when either item-id
    field is, ``train.few_shot_parts`` when any field it sets is): those the recipe leaves as the file says."""
    out = []
    for section, key, _ in SEARCH_SPACE:
        values = toml_values.get(section, {})
        if (section, key) == ("model", "item_ids"):
            if "item_id_embedding" in values or "item_id_residual" in values:
                out.append(f"{section}.{key}")
        elif (section, key) == ("train", "few_shot_parts"):
            if any(field in toml_values.get(part, {}) for part, fields in FEW_SHOT_PARTS_OFF.items()
                   for field in fields):
                out.append(f"{section}.{key}")
        elif key in values:
            out.append(f"{section}.{key}")
    return tuple(out)


def config_over_recipe(toml_values: Mapping[str, Mapping[str, Any]] | None) -> tuple[RunConfig, tuple[str, ...]]:
    """The recipe's base with a TOML's values on top, and the searched settings that TOML fixes."""
    merged = recipe_base_dict()
    for section, values in (toml_values or {}).items():
        base = merged.setdefault(section, {})
        if section == "model" and values.get("kind", base.get("kind")) != base.get("kind"):
            base.clear()  # another model kind: the base's neural-cf settings (fold_in, ...) do not apply
        # two ways to set the running average: the overlay's wins
        if section == "train" and ({"average_decay", "average_epochs"} & set(values)):
            base.pop("average_decay", None)
            base.pop("average_epochs", None)
        base.update(values)
    return RunConfig.from_dict(merged), explicit_settings(toml_values or {})


def layered_config(config: str | Path | None = None, preset_name: str | None = None, model: str | None = None,
                   algorithm: str | None = None) -> tuple[RunConfig, tuple[str, ...]]:
    """The base configuration of ``metarec train`` and the searched settings it fixes: ``model`` /
    ``algorithm`` give a plain preset (no recipe, nothing searched); otherwise the recipe's base with the
    preset's and then the TOML file's values on top (what they set is fixed)."""
    if model is not None or algorithm is not None:
        if config is not None:
            cfg = RunConfig.from_toml(config)
            base = RunConfig.preset(model or cfg.model.kind, algorithm)
            cfg = RunConfig(cfg.data, cfg.split, base.model if model else cfg.model, base.meta if algorithm else cfg.meta, cfg.train)
        else:
            cfg = RunConfig.preset(model or "feature-mlp", algorithm)
        return cfg, tuple(f"{s}.{k}" for s, k, _ in SEARCH_SPACE)
    values: dict = {}
    layers = [preset_dict(preset_name)] if preset_name else []
    if preset_name == "recipe":
        layers = []  # the recipe's base itself: naming it fixes nothing, the search still chooses
    for layer in layers + ([load_toml_values(config)] if config else []):
        for section, entries in layer.items():
            values.setdefault(section, {}).update(entries)
    return config_over_recipe(values)
