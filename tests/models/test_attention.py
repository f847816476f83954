"""AttentionRec keeps the model contract."""

from __future__ import annotations

import pytest
from contract import ModelContract, model_maker

from metarec.models import AttentionRec, ModelConfig

CONFIG = ModelConfig(kind="attention", embedding_size=4, hidden=(8,), attention_size=5)


class TestAttentionRec(ModelContract):
    @pytest.fixture
    def make_model(self):
        return model_maker(CONFIG, AttentionRec)
