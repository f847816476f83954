"""FeatureMLP and MeLU (FeatureMLP with MeLU's sizes) keep the model contract."""

from __future__ import annotations

import pytest
from contract import ModelContract, model_maker

from metarec.models import FeatureMLP, ModelConfig

CONFIGS = {
    "feature-mlp": ModelConfig(kind="feature-mlp", embedding_size=4, hidden=(8, 8)),
    "item-ids": ModelConfig(kind="feature-mlp", embedding_size=4, hidden=(8,), item_id_embedding=True, item_id_dropout=0.3),
    "melu": ModelConfig.melu(),
}


class TestFeatureMLP(ModelContract):
    @pytest.fixture(params=sorted(CONFIGS))
    def make_model(self, request):
        return model_maker(CONFIGS[request.param], FeatureMLP)

    def test_plain_head_is_what_the_batched_kernel_needs(self, model):
        assert model.head_is_plain()
        assert [w for w, _ in model.linear_names()] == [n for n in model.parameter_groups()["head"] if n.endswith("weight")]
