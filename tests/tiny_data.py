"""Random ratings for the small test datasets (tests/conftest.py, tests/meta/conftest.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def random_ratings(rng: np.random.Generator, n_users: int, n_items: int, sizes: tuple[int, int],
                   popularity: np.ndarray | None = None) -> pd.DataFrame:
    """Each user ``u{i}`` rates between ``sizes`` distinct items ``i{j}`` (drawn by ``popularity`` when
    given), ratings uniform on 1-5, timestamps increasing."""
    p = None if popularity is None else popularity / popularity.sum()
    rows = []
    for u in range(n_users):
        for j in rng.choice(n_items, rng.integers(*sizes), replace=False, p=p):
            rows.append((f"u{u}", f"i{j}", float(rng.integers(1, 6)), 1_000_000 + len(rows)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
