"""One of scripts/kill_resume.py's trials in CI (the script makes >= 100 kills): a training run killed with
SIGKILL and resumed equals an uninterrupted run bit for bit, logs every epoch once, leaves no temp folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kill_resume.py"


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_bits():
    spec = importlib.util.spec_from_file_location("metarec_kill_resume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    kills, problems = module.run(kills=1, seed=5)
    assert kills >= 1 and not problems, problems
