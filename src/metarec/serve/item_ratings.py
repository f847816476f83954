"""Ratings of a new item folded into a served model: the item's vector moves from what its attributes
predict towards what the people who rated it say.

Why it is cheap and exact: a model linear in the item vector (neural-cf: ``score = q_v . w_u + b_v + c_u``)
turns each rater, once adapted to their own ratings of other items, into one row ``[w_u, 1]`` of a ridge
regression of their rating's residual on the item's offset (:mod:`metarec.meta.item_fold_in`, the
benchmark's item fold-in). Its normal equations are sums over raters, so only the sums are kept per item
(the Gram matrix and right-hand side): ratings posted in several calls add up to one call with all of them.

The penalty is the item fold-in's empirical-Bayes prior, ``sigma^2 / s_j^2`` (scale 1): ``s_j^2`` how far
warm items' trained vectors stray from their attributes' prediction, ``sigma^2`` the rating noise measured
on validation users in training (their RMSE; 1 when the checkpoint does not record it). It is fixed the
first time an item is rated and saved with the sums, so a reloaded model solves the same equations.

Saved beside the checkpoint as ``item_ratings.safetensors`` (tensors, the ids in its metadata; no pickle).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from metarec.errors import MetarecError
from metarec.linalg import solve_ridge
from metarec.meta.checkpoint import Checkpoint
from metarec.meta.item_fold_in import item_prior_variance, rating_statistics
from metarec.serve.replicas import replica

FILE = "item_ratings.safetensors"


@dataclass(frozen=True)
class ItemRatings:
    """Per rated item, ``(gram [d, d], rhs [d], n ratings)`` of its fold-in, and the penalty ``[d]``."""

    penalty: np.ndarray
    stats: Mapping[str, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)

    def added(self, item_id: str, w: np.ndarray, c: np.ndarray, prior: np.ndarray, rating: np.ndarray) -> "ItemRatings":
        """A copy with raters ``(w, c)`` and their ``rating`` of ``item_id`` (prior vector ``prior``) added."""
        gram, rhs = rating_statistics(w, c, prior, rating)
        old_gram, old_rhs, n = self.stats.get(item_id, (0.0, 0.0, 0))
        return dataclasses.replace(self, stats={**self.stats, item_id: (old_gram + gram, old_rhs + rhs, n + len(rating))})

    def offsets(self, ids: tuple[str, ...]) -> dict[int, np.ndarray]:
        """Catalogue index -> the item's offset ``[dq, db]``, for the rated items in ``ids``."""
        where = {item_id: i for i, item_id in enumerate(ids)}
        rated = [item_id for item_id in self.stats if item_id in where]
        if not rated:
            return {}
        gram = np.stack([self.stats[i][0] for i in rated])
        rhs = np.stack([self.stats[i][1] for i in rated])
        return dict(zip((where[i] for i in rated), solve_ridge(gram, rhs, self.penalty)))

    def count(self, item_id: str) -> int:
        return self.stats[item_id][2] if item_id in self.stats else 0

    def digest(self) -> bytes:
        """Changes with every rating added (for the served ``model_version``)."""
        h = hashlib.sha256(self.penalty.tobytes())
        for item_id, (gram, rhs, n) in sorted(self.stats.items()):
            h.update(item_id.encode("utf-8") + np.int64(n).tobytes() + gram.tobytes() + rhs.tobytes())
        return h.digest()


def fold_in_penalty(checkpoint: Checkpoint) -> np.ndarray:
    """``sigma^2 / s_j^2`` (module docstring), computed on a replica so the served model is never touched."""
    best = dict(checkpoint.state).get("best_val") or {}
    rmse = best.get("val_new_users_rmse")
    sigma2 = float(rmse) ** 2 if isinstance(rmse, (int, float)) and np.isfinite(rmse) and rmse > 0 else 1.0
    return sigma2 / item_prior_variance(replica(checkpoint).learner)


def with_offsets(checkpoint: Checkpoint, ratings: ItemRatings | None) -> Checkpoint:
    """``checkpoint`` whose model scores each rated item with its folded-in offset (a replica: same tensors,
    own module objects; the checkpoint passed in is untouched). Nothing rated: ``checkpoint`` itself."""
    offsets = {} if ratings is None else ratings.offsets(checkpoint.item_vocab.ids)
    if not offsets:
        return checkpoint
    out = replica(checkpoint)
    model = out.learner.model
    param = next(model.parameters())
    table = torch.zeros(len(checkpoint.item_vocab), model.factors + 1, dtype=torch.float64)
    for idx, delta in offsets.items():
        table[idx] = torch.from_numpy(delta)
    model.item_offset = table.to(dtype=param.dtype, device=param.device)
    return out


def write_ratings(path: Path, ratings: ItemRatings) -> None:
    from safetensors.numpy import save_file

    ids = list(ratings.stats)
    save_file({"penalty": ratings.penalty.astype(np.float64),
               "gram": np.stack([ratings.stats[i][0] for i in ids]),
               "rhs": np.stack([ratings.stats[i][1] for i in ids]),
               "count": np.asarray([ratings.stats[i][2] for i in ids], dtype=np.int64)},
              str(path), metadata={"item_ids": json.dumps(ids)})


def read_ratings(path: Path, ids: tuple[str, ...], width: int) -> ItemRatings:
    """What :func:`write_ratings` wrote, checked against the catalogue (ids) and the item vectors' width."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            item_ids = json.loads((f.metadata() or {}).get("item_ids", "null"))
            tensors = {k: f.get_tensor(k) for k in ("penalty", "gram", "rhs", "count")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MetarecError(f"{path}: not a readable item-ratings file ({exc})") from None
    n = len(item_ids) if isinstance(item_ids, list) else -1
    shapes = {"penalty": (width,), "gram": (n, width, width), "rhs": (n, width), "count": (n,)}
    if n < 1 or any(tensors[k].shape != s for k, s in shapes.items()) or not all(
            np.isfinite(tensors[k]).all() for k in ("penalty", "gram", "rhs")) or (tensors["penalty"] <= 0).any():
        raise MetarecError(f"{path}: item ratings do not match this model (shapes, finite values)")
    unknown = sorted(set(map(str, item_ids)) - set(ids))
    if unknown:
        raise MetarecError(f"{path}: rated items not in the catalogue: {unknown[:5]}")
    stats = {str(i): (tensors["gram"][k].astype(np.float64), tensors["rhs"][k].astype(np.float64),
                      int(tensors["count"][k])) for k, i in enumerate(item_ids)}
    return ItemRatings(tensors["penalty"].astype(np.float64), stats)


@dataclass(frozen=True)
class Rater:
    """One person's rating of the item, and what adapts the model to them: their ratings of other items
    (``{item_id: rating}``, as a new user's) and optional attributes."""

    ratings: Mapping[object, float]
    rating: float
    user_attributes: Mapping[str, object] | None = None
