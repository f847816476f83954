"""A few hundred of scripts/fuzz.py's inputs in CI (the script runs >= 10,000): corrupted data files and
hostile requests give clear errors or sound results - no traceback, no 5xx, no hang, no garbage accepted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("metarec_fuzz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_corrupted_data_files_are_refused_clearly_or_load_soundly(fuzz):
    tally = fuzz.run(loaders=300, requests=0, seed=11)
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.outcomes["refused, clearly"] > 100 and tally.outcomes["loaded, sound"] > 20  # both kinds seen


def test_hostile_requests_get_200_or_a_4xx_naming_the_field(fuzz):
    tally = fuzz.run(loaders=0, requests=300, seed=11)
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.outcomes["HTTP 4xx"] > 100 and tally.outcomes["HTTP 2xx"] > 30


def test_the_oracle_catches_what_it_should(fuzz):
    """The checks themselves can fail: garbage that loaded is reported."""
    import pandas as pd

    from metarec.data.dataset import RatingDataset

    ratings = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["a", "b"], "rating": [1.0, 1e6], "timestamp": [1, 2]})
    wild = RatingDataset.from_frames("wild", ratings, rating_scale=(1.0, 1e6))
    assert fuzz.check_dataset(wild) == "a rating scale 1-1e+06 from a typo"
