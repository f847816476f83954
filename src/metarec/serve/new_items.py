"""New items added to a served model: the catalogue grows by one item whose vector comes from its attributes.

Why it works without retraining: every model already scores items training never saw from their
attributes alone (their item-id vector is masked to zero, ``embed_items(as_new=True)``), exactly as the
benchmark's new-item scenarios do. Adding one is therefore bookkeeping: the item's encoded attributes
are appended to the catalogue tables, every per-item tensor grows by a row (a new item's id vector and
"known" flag are zero), and the vocabulary by the id. Existing items keep their indices, so answers
computed before the change stay valid.

The result is a new :class:`Checkpoint` (the old one is untouched, so requests in flight finish on it);
saved, it loads like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from metarec.data.encoding import FeatureTable
from metarec.data.vocab import Vocabulary
from metarec.errors import MetarecError
from metarec.meta.checkpoint import Checkpoint
from metarec.meta.learner import MetaLearner
from metarec.models.config import build_model
from metarec.tasks.features import FeatureSpace

CATALOGUE_BUFFERS = ("item_single__", "item_multi__")


def _append_row(table: FeatureTable, row: FeatureTable) -> FeatureTable:
    device = next(iter((*table.single.values(), *table.multi.values())), torch.zeros(0)).device
    single = {c: torch.cat([t, row.single[c].to(device)]) for c, t in table.single.items()}
    multi = {c: torch.cat([t, row.multi[c].to(device)]) for c, t in table.multi.items()}
    return FeatureTable(single, multi, len(table) + 1)


def with_new_item(checkpoint: Checkpoint, item_id: str, record: Mapping[str, object]) -> Checkpoint:
    """``checkpoint`` with one more item, ``item_id``, encoded from ``record`` (the attributes the model reads,
    already checked); every weight is shared with the old checkpoint's values (copied, not retrained)."""
    if item_id in checkpoint.item_vocab:
        raise MetarecError(f"item {item_id!r} is already in the catalogue")
    features = checkpoint.features
    n = len(checkpoint.item_vocab)
    items = _append_row(features.item_features, features.item_encoder.transform_record(record))
    known = torch.cat([features.known_items, torch.zeros(1, dtype=features.known_items.dtype,
                                                         device=features.known_items.device)])
    space = FeatureSpace(features.user_encoder, features.item_encoder, features.user_features, items, known)
    old = checkpoint.learner.model
    device = next(old.parameters()).device
    model = build_model(checkpoint.model_config, space.user_encoder, space.item_encoder, items.to("cpu"),
                        known_items=known.cpu(), rating_scale=checkpoint.rating_scale)
    model.load_state_dict(_grown_state(old.state_dict(), model.state_dict(), n))
    model.to(device)
    model.eval()
    learner = MetaLearner(model, checkpoint.learner.config, space.user_features)
    with torch.no_grad():
        for name, rate in learner.inner_lrs.items():
            rate.copy_(checkpoint.learner.inner_lrs[name])
    vocab = Vocabulary([*checkpoint.item_vocab.ids, item_id], "item_id")
    return dataclasses.replace(checkpoint, learner=learner, features=space, item_vocab=vocab, average=None)


def _grown_state(old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The old weights in the grown model's shapes: catalogue tables as built from the new features; any
    other per-item tensor (item-id vectors, "known" flags) gets a zero row for the new item."""
    out = {}
    for name, target in new.items():
        value = old[name]
        if name.startswith(CATALOGUE_BUFFERS) or value.shape == target.shape:
            out[name] = target if name.startswith(CATALOGUE_BUFFERS) else value
        elif value.dim() and value.shape[0] == n and tuple(target.shape) == (n + 1, *value.shape[1:]):
            out[name] = torch.cat([value, value.new_zeros(1, *value.shape[1:])])
        else:
            raise MetarecError(f"cannot add an item to this model: {name} has shape {tuple(value.shape)}")
    return out


def with_new_metadata(items: pd.DataFrame, item_id: str, metadata: Mapping[str, Any]) -> pd.DataFrame:
    """The items table with the new item's row (its values for the table's columns; missing ones empty)."""
    row = {c: [_cell(metadata.get(c))] for c in items.columns}
    new = pd.DataFrame(row, index=pd.Index([item_id], name=items.index.name))
    grown = pd.concat([items, new.astype(object)]) if len(items.columns) else items.reindex([*items.index, item_id])
    for column in items.columns:  # back to the table's own types where the new value fits them
        try:
            grown[column] = grown[column].astype(items[column].dtype)
        except (TypeError, ValueError):
            pass
    return grown


def _cell(value: Any) -> Any:
    """A list value as a tuple, as the loaders store a multi-valued attribute."""
    return tuple(value) if isinstance(value, list) else value


def grown_counts(counts: np.ndarray) -> np.ndarray:
    """Training popularity with the new item's: none."""
    return np.append(np.asarray(counts, dtype=np.int64), 0)


def items_version(base: str, added: list[str], ratings: bytes = b"") -> str:
    """The served ``model_version`` once items are added or rated: the weights' version and a digest of the
    added ids (and of the folded-in ratings' digest), so a client's cached answers are told apart from the
    catalogue's before."""
    digest = hashlib.sha256("\n".join(added).encode("utf-8") + ratings).hexdigest()[:8]
    return f"{base}+{len(added)}.{digest}"
