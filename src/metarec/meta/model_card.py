"""MODEL_CARD.md: what a saved model is, what it was trained and validated on, and what it is not for.

Why: a model folder travels (a run folder copied to a server, a ``rec.save()`` folder handed to a
colleague) without the command line or notebook that made it. The card written beside the weights says
which data it saw, which settings the recipe chose, how it scored on validation users, when and with
which metarec, so a reader can judge whether it fits their use. Everything on it comes from the
checkpoint itself (its run configuration and training state, where the trainer records the data sizes,
the best epoch's validation metrics and the recipe's choice), so any folder holding a checkpoint can
get one.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Mapping

from metarec._io import write_text
from metarec.meta.checkpoint import Checkpoint
from metarec.tasks.split import ColdStartSplit
from metarec.version import __version__

CARD = "MODEL_CARD.md"


def data_sizes(split: ColdStartSplit) -> dict[str, int]:
    """The sizes a card reports (recorded in the trainer's state, so they travel with the checkpoint)."""
    dataset = split.dataset
    return {"users": int(dataset.n_users), "items": int(dataset.n_items), "ratings": int(len(dataset.ratings)),
            "train_users": int(len(split.train_users)), "validation_users": int(len(split.val_users)),
            "test_users": int(len(split.test_users)), "new_items": int(split.new_item_mask.sum()),
            "meta_train_tasks": int(len(split.meta_train))}


def render_model_card(run_config: Mapping[str, Any], state: Mapping[str, Any], *, n_users: int, n_items: int,
                      dataset_name: str | None = None, versions: Mapping[str, str] | None = None,
                      model_version: str | None = None, now: _dt.datetime | None = None) -> str:
    """The card's Markdown for a checkpoint's ``run_config`` and training ``state``."""
    import tomli_w

    data = dict(run_config.get("data", {}))
    model, meta, train = (dict(run_config.get(k, {})) for k in ("model", "meta", "train"))
    split = dict(run_config.get("split", {}))
    name = dataset_name or str(data.get("dataset", "unknown"))
    versions = dict(versions or {})
    when = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    sizes = dict(state.get("data") or {})
    implicit = bool(model.get("implicit")) or "implicit" in run_config
    title = "cold-start recommender (implicit feedback)" if implicit else "cold-start rating predictor"
    lines = [f"# Model card: metarec {title}", "",
             f"- **Date written:** {when}",
             f"- **metarec version:** {versions.get('metarec', __version__)}"
             + "".join(f"; {k} {versions[k]}" for k in ("torch", "python") if k in versions)]
    if model_version:
        lines.append(f"- **model_version:** `{model_version}` (sha256 of the weights, first 16 hex digits)")
    lines += ["", "## Data", "", f"- **Dataset:** {name}"]
    if implicit:
        threshold = data.get("positive_threshold")
        lines.append("- **Feedback:** implicit: the positives are "
                     + ("every interaction" if threshold is None else f"the interactions rated >= {threshold:g}"))
    if sizes:
        lines.append(f"- **Size:** {sizes.get('users')} users, {sizes.get('items')} items, {sizes.get('ratings')} "
                     + ("positive interactions" if implicit else "ratings"))
        lines.append(f"- **Split** ({split.get('protocol', 'melu')}, seed {split.get('seed', 0)}): "
                     f"{sizes.get('train_users')} meta-train users ({sizes.get('meta_train_tasks')} tasks), "
                     f"{sizes.get('validation_users')} validation users, {sizes.get('test_users')} test users; "
                     f"{sizes.get('new_items')} items held out as new")
    else:
        lines.append(f"- **Size:** {n_users} users, {n_items} items in the model's vocabularies")
    lines += ["", "## Configuration", "",
              f"- **Model:** {model.get('kind', '?')}; meta-learner {meta.get('algorithm', '?')} "
              f"(adapts {meta.get('adapt', '?')}, {meta.get('inner_steps', '?')} inner steps)"]
    recipe = state.get("recipe")
    if recipe:
        chosen = ", ".join(f"{k} = {v}" for k, v in sorted(dict(recipe.get("chosen", {})).items()))
        lines.append(f"- **Recipe** (chosen on validation users only, {recipe.get('trials', '?')} trainings): {chosen}")
    else:
        lines.append("- **Recipe:** none searched; the configuration below was trained as given")
    members = int(train.get("members", 1))
    if members > 1:
        lines.append(f"- **Ensemble:** {members} meta-learners (this configuration from seeds s, s + 1000, ...; "
                     "the others in `members/`); a user's prediction is the mean of the members adapted to them")
    lines += ["", "<details><summary>Full run configuration</summary>", "", "```toml",
              tomli_w.dumps(_toml_ready(run_config)).rstrip(), "```", "", "</details>", "",
              "## Validation", ""]
    best = state.get("best_epoch", -1)
    score = state.get("best_val_score" if implicit else "best_val_mae")
    selection = (f"{state.get('selection', 'ndcg@20')} of validation users, higher is better" if implicit
                 else train.get("select_on", "mae"))
    if best is not None and best >= 0 and score is not None:
        lines.append(f"- **Selected epoch:** {best} of {state.get('epoch')} run "
                     f"(selection: {selection}; score {float(score):.4f})")
        for key, value in sorted(dict(state.get("best_val") or {}).items()):
            lines.append(f"- `{key}`: {float(value):.4f}")
    else:
        lines.append("- no validation epoch recorded")
    if implicit:
        return "\n".join(lines + _IMPLICIT_USE)
    lines += ["", "Validation users are users held out of meta-training; test users were not used to choose",
              "anything. `*_mae`: mean absolute error of the predicted ratings on their query ratings (`*_rmse`:",
              "root mean squared error); `val_k{K}_mae`: after K support ratings; `val_mae`: the selection score.", "",
              "## Intended use", "",
              "Cold-start rating prediction: a user new to this catalogue rates a few items (optionally with",
              "their attributes), the model adapts to those ratings and predicts their ratings of the",
              f"catalogue's items, which rank recommendations. Validated on {name}'s held-out users only.", "",
              "## Limits", "",
              "- Only the items and attribute values seen in training are known; other ids are ignored.",
              "- Its accuracy was measured on one dataset's held-out users; on other populations, other",
              "  catalogues or after the catalogue changes, measure again before relying on it.",
              "- It predicts explicit ratings on the training data's scale; it is not a model of purchases,",
              "  clicks or of what a user should be shown for reasons beyond their predicted rating.",
              "- Items are ranked by predicted rating alone: nothing is done for diversity, novelty or fairness.", ""]
    return "\n".join(lines)


_IMPLICIT_USE = [
    "", "Validation users are users held out of meta-training; test users were not used to choose anything.",
    "`val_ndcg@20`: nDCG@20 of their held-out positives ranked against the whole catalogue, with their",
    "whole support; `val_k{K}_ndcg@20`: after K support positives. The selection score is their mean.", "",
    "## Intended use", "",
    "Cold-start top-N recommendation from implicit feedback: a user new to this catalogue names a few items",
    "they played, clicked or like (no ratings), the model folds them in against the whole catalogue and",
    "ranks every item by a score. Scores only order items; they are not ratings or probabilities.", "",
    "## Limits", "",
    "- Only the items and attribute values seen in training are known; other ids are ignored.",
    "- Its ranking quality was measured on one dataset's held-out users; on other populations, other",
    "  catalogues or after the catalogue changes, measure again before relying on it.",
    "- Items are ranked by score alone: nothing is done for diversity, novelty or fairness, and popular",
    "  items are favoured where the data favour them.", ""]


def checkpoint_card(checkpoint: Checkpoint, **details: Any) -> str:
    """The card of a checkpoint (``details``: dataset_name, versions, model_version, now)."""
    return render_model_card(checkpoint.run_config, checkpoint.state, n_users=len(checkpoint.user_vocab),
                             n_items=len(checkpoint.item_vocab), **details)


def write_model_card(directory: str | Path, text: str) -> Path:
    """Write ``text`` as ``directory/MODEL_CARD.md`` atomically (a reader never sees half of it)."""
    path = Path(directory) / CARD
    write_text(path, text)
    return path


def _toml_ready(obj: Any) -> Any:
    """TOML has no null: drop None values (unset options) so the configuration can be shown as TOML."""
    if isinstance(obj, Mapping):
        return {str(k): _toml_ready(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_toml_ready(v) for v in obj if v is not None]
    return obj
