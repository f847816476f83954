"""MetaConfig: the kernel choice is validated, and a learning rate nothing uses is pointed out."""

from __future__ import annotations

import warnings

import pytest

from metarec.errors import ConfigError
from metarec.meta.config import MetaConfig


def test_unknown_kernel_is_refused():
    with pytest.raises(ConfigError, match="kernel must be one of"):
        MetaConfig(kernel="cuda-magic")


def test_inner_lr_without_inner_steps_warns():
    with pytest.warns(UserWarning, match="inner_lr = 0.3 is unused"):
        MetaConfig(inner_steps=0, inner_lr=0.3)


@pytest.mark.parametrize("meta", [{"inner_steps": 0}, {"inner_steps": 1, "inner_lr": 0.3},
                                  {"inner_steps": 0, "eval_inner_steps": 2, "inner_lr": 0.3}])
def test_no_warning_where_the_rate_is_used_or_left_alone(meta):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetaConfig(**meta)
