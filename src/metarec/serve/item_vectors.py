"""Item vectors of a served model and the items most similar to one, by cosine similarity.

Why only some models: in a model linear in an item vector (NeuralCF: ``score = q_v . w_u + b_v + c_u``)
``q_v`` is the item's place in the space users are scored in, so two items with close ``q`` are rated
alike by every user; that is what "similar items" and exported vectors for an ANN index or a downstream
model need. A model whose items enter a nonlinear head (feature-mlp, attention) has no such vector:
its attribute embeddings are inputs, not a space users' tastes are measured in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from metarec.errors import MetarecError


def factor_vectors(catalogue_vec: torch.Tensor | None, model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """``(q [N, F], b [N])`` from a personalizer's catalogue vectors under the meta-parameters (new items:
    from their attributes); :class:`MetarecError` for a model without item factor vectors."""
    kind = type(model).__name__
    if not getattr(model, "linear_in_item", False):
        raise MetarecError(f"this {kind} model has no item vectors (its items enter a nonlinear head); "
                           "train the neural-cf preset for item vectors and similar items")
    if catalogue_vec is None:
        raise MetarecError(f"this {kind} model adapts its item tower per user: no item vector is shared by all users")
    factors = int(model.factors)
    vec = catalogue_vec.detach().double().cpu().numpy()
    return vec[:, :factors].astype(np.float32), vec[:, factors].astype(np.float32)


def vectors_frame(ids: tuple[str, ...], q: np.ndarray, bias: np.ndarray) -> pd.DataFrame:
    """One row per item: ``item_id``, ``bias`` and ``vector`` (a float32 array per row)."""
    return pd.DataFrame({"item_id": list(ids), "bias": bias.astype(np.float32), "vector": list(q)})


class CosineIndex:
    """Exact cosine similarity over a catalogue's item vectors (a catalogue of thousands: one product)."""

    def __init__(self, q: np.ndarray) -> None:
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        self._unit = (q / np.maximum(norms, 1e-12)).astype(np.float32)

    def nearest(self, idx: int, k: int) -> list[tuple[int, float]]:
        """The ``k`` items closest to item ``idx`` (itself left out), best first; ties by catalogue order."""
        scores = self._unit @ self._unit[idx]
        scores[idx] = -np.inf
        k = min(k, len(scores) - 1)
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [(int(i), float(scores[i])) for i in top]
