"""Implicit-feedback baselines: score the whole catalogue for a new user from their few positives.

Each implements :class:`ImplicitBaseline` (``fit`` on the training users' interactions, ``score`` for new
users given their support positives as CSR), has a frozen config of its hyperparameters, and falls back
to popularity for a user with no positive. ``IMPLICIT_BASELINES[name](**params)`` builds one from a
grid entry of :func:`default_grid` (the validation-user tuning is the caller's).
"""

from __future__ import annotations

from typing import Any, Callable

from metarec.baselines.implicit.common import ImplicitBaseline
from metarec.baselines.implicit.content import ContentKNN, ContentKNNConfig, item_attribute_matrix
from metarec.baselines.implicit.ials import IALS, IALSConfig
from metarec.baselines.implicit.neighbours import (
    EASE,
    EASEConfig,
    ItemKNN,
    ItemKNNConfig,
    MostPopular,
    MostPopularConfig,
    ease_weights,
)
from metarec.errors import ConfigError

__all__ = [
    "ImplicitBaseline", "MostPopular", "MostPopularConfig", "ItemKNN", "ItemKNNConfig", "EASE", "EASEConfig",
    "ease_weights", "IALS", "IALSConfig", "ContentKNN", "ContentKNNConfig", "item_attribute_matrix",
    "IMPLICIT_BASELINES", "default_grid",
]

IMPLICIT_BASELINES: dict[str, Callable[..., ImplicitBaseline]] = {
    "popularity": MostPopular,
    "item-knn": ItemKNN,
    "ease": EASE,
    "ials": IALS,
    "content": ContentKNN,  # needs the item attributes too: ContentKNN.with_items(item_attribute_matrix(...))
}

# Small grids (<= 8 settings) for tuning on validation users; the values span what the papers report as
# good on MovieLens / Last.fm-sized data rather than a fine search.
_GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "item-knn": [{"neighbours": k, "shrink": s} for k in (20, 100, 500) for s in (0.0, 10.0)],
    "ease": [{"l2": l2} for l2 in (200.0, 500.0, 2000.0, 5000.0)],  # ML-1M's optimum is at 2000-5000
    "ials": [{"factors": f, "reg": r, "alpha": a} for f in (64, 128) for r in (0.1, 1.0) for a in (1.0, 10.0)],
    "content": [{"beta": b} for b in (0.0, 0.3, 1.0, 3.0)],  # beta: popularity prior; ML-1M picks 3
}


def default_grid(name: str) -> list[dict[str, Any]]:
    """The hyperparameter settings to try for baseline ``name`` (each a dict of config fields)."""
    if name not in _GRIDS:
        raise ConfigError(f"unknown implicit baseline {name!r}; known: {', '.join(IMPLICIT_BASELINES)}")
    return [dict(entry) for entry in _GRIDS[name]]
