"""A tiny implicit-feedback table trio (plays / listeners / items) for the CLI and serving tests of
``metarec train --feedback implicit``: 300 users in 3 clusters, each playing 14-18 items of their cluster's block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

N_USERS, N_ITEMS, CLUSTERS = 300, 60, 3


def write_play_tables(folder: Path) -> list[str]:
    """Write the trio into ``folder``; returns the ``metarec train`` data flags that read it."""
    rng = np.random.default_rng(0)
    per = N_ITEMS // CLUSTERS
    rows = []
    for u in range(N_USERS):
        c = u % CLUSTERS
        for j in rng.choice(per, rng.integers(14, 19), replace=False):
            rows.append((f"u{u}", f"i{c * per + j}", int(rng.integers(1, 6)), int(rng.integers(1_000_000, 2_000_000))))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["listener", "track", "plays", "when"]).to_csv(folder / "plays.csv", index=False)
    pd.DataFrame({"listener": [f"u{u}" for u in range(N_USERS)],
                  "cluster": [f"c{u % CLUSTERS}" for u in range(N_USERS)]}).to_csv(folder / "listeners.csv", index=False)
    pd.DataFrame({"track": [f"i{j}" for j in range(N_ITEMS)], "title": [f"Track {j}" for j in range(N_ITEMS)],
                  "block": [f"b{j // per}" for j in range(N_ITEMS)]}).to_csv(folder / "tracks.csv", index=False)
    return ["--dataset", str(folder / "plays.csv"), "--users", str(folder / "listeners.csv"),
            "--items", str(folder / "tracks.csv"), "--column", "user=listener", "--column", "item=track",
            "--column", "rating=plays", "--column", "timestamp=when"]


def block_of(item_id: str) -> int:
    """The cluster whose users play ``item_id``."""
    return int(item_id[1:]) // (N_ITEMS // CLUSTERS)
