"""NeuralCF keeps the model contract, with and without the closed-form fold-in."""

from __future__ import annotations

import pytest
from contract import ModelContract, model_maker

from metarec.models import ModelConfig, NeuralCF

CONFIGS = {
    "plain": ModelConfig(kind="neural-cf", embedding_size=4, hidden=(8,), factors=3),
    "fold-in": ModelConfig(kind="neural-cf", embedding_size=4, hidden=(8,), factors=3, fold_in=True),
    "fold-in-by-size-item-ids": ModelConfig(kind="neural-cf", embedding_size=4, hidden=(8,), factors=3, fold_in=True,
                                            penalty_by_support_size=True, penalty_rate=4.0,
                                            item_id_embedding=True, item_id_residual=True),
}


class TestNeuralCF(ModelContract):
    @pytest.fixture(params=sorted(CONFIGS))
    def make_model(self, request):
        return model_maker(CONFIGS[request.param], NeuralCF)
