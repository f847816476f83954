from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.data.dataset import RatingDataset


@pytest.fixture
def tiny_ratings_without_time() -> RatingDataset:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", float(rng.integers(1, 6))) for u in range(20) for i in rng.choice(50, 20, replace=False)]
    return RatingDataset.from_frames("no-time", pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]))
