"""Shared fixtures. Real datasets are read in place from ``$METAREC_DATA_DIR`` (default ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# One marker file per dataset folder; CI always has them, a bare checkout may not.
DATA_MARKERS = (
    "ml-100k/u.data",
    "ml-1m/users.dat",
    "ml-1m/movies.dat",
    "ml-1m-melu-extra/movies_extrainfos.dat",
    "hetrec2011-lastfm-2k/user_artists.dat",
)


def _data_root() -> Path:
    return Path(os.environ.get("METAREC_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data root. Without its files a test is skipped on a developer's machine, but fails
    under CI (``CI`` set), where the data are always provided: a silent skip there would hide a break."""
    root = _data_root()
    missing = [m for m in DATA_MARKERS if not (root / m).exists()]
    if not (root / "ml-1m" / "ratings.dat").exists() and not (root / "ml-1m" / "ratings.dat.gz").exists():
        missing.append("ml-1m/ratings.dat[.gz]")
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI: real data not found under {root} (missing: {', '.join(missing)})")
    if missing:
        pytest.skip(f"real data not found under {root} (missing: {', '.join(missing)})")
    return root
