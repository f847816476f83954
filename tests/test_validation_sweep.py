"""scripts/validation_sweep.py: variants override the base config as written."""

import importlib.util
from pathlib import Path

import pytest

from metarec.meta.run import RunConfig

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "validation_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("validation_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_overrides_fields_of_several_sections(sweep):
    base = RunConfig.preset("neural-cf", "maml")
    out = sweep.apply(base, 'meta.outer_lr=0.001, model.hidden=[32, 16],train.resample_query=true')
    assert out.meta.outer_lr == 0.001 and out.model.hidden == (32, 16) and out.train.resample_query is True
    assert sweep.apply(base, "") == base


def test_bad_variant_fails_loudly(sweep):
    with pytest.raises(Exception):
        sweep.apply(RunConfig.preset("neural-cf"), "meta.no_such_field=1")
