"""Serving a meta-trained model: the :class:`ColdStartRecommender` facade and its HTTP service.

``create_app`` (FastAPI) is imported lazily so that the facade works without the web stack loaded.
"""

from __future__ import annotations

from typing import Any

from metarec.serve.recommender import ColdStartRecommender, Recommendations

__all__ = ["ColdStartRecommender", "Recommendations", "create_app", "create_app_from_dir"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "create_app_from_dir"):
        from metarec.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'metarec.serve' has no attribute {name!r}")
