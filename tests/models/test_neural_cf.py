"""NeuralCF keeps the model contract, with and without the closed-form fold-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from contract import ModelContract, model_maker

from metarec.models import ModelConfig, NeuralCF
from metarec.models.neural_cf import RIDGE_FLOOR

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


def _ridge_reference(z: np.ndarray, target: np.ndarray, weight: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """The weighted ridge solution in float64 by the normal equations."""
    gram = (z * weight[:, None]).T @ z + np.diag(reg)
    return np.linalg.solve(gram, (z * weight[:, None]).T @ target)


def test_ridge_matches_the_normal_equations():
    gen = np.random.default_rng(0)
    z, target = gen.normal(size=(7, 5)), gen.normal(size=7)
    weight, reg = np.r_[np.ones(5), 0.0, 0.0], np.array([0.5, 1.0, 2.0, 3.0, 0.1])
    delta, inverse = NeuralCF._ridge(*(torch.tensor(a) for a in (z, target, weight, reg)))
    np.testing.assert_allclose(delta.numpy(), _ridge_reference(z, target, weight, reg), rtol=1e-10)
    gram = (z * weight[:, None]).T @ z + np.diag(reg)
    np.testing.assert_allclose(inverse.numpy() @ gram, np.eye(5), atol=1e-10)


def test_ridge_with_a_vanishing_penalty_stays_a_ridge_fit():
    """A learned penalty far below the floor, one support rating, 33 coordinates, float32: the solve is the
    floored ridge (within float32 precision), fits the rating it saw and predicts finite, bounded offsets."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 33, generator=gen)
    target, weight, reg = torch.tensor([0.5]), torch.ones(1), torch.full((33,), 1e-12)
    delta, _ = NeuralCF._ridge(z, target, weight, reg)
    expected = _ridge_reference(z.double().numpy(), target.double().numpy(), np.ones(1), np.full(33, RIDGE_FLOOR))
    np.testing.assert_allclose(delta.numpy(), expected, rtol=0, atol=2e-3)
    assert abs(float(z @ delta) - 0.5) < 1e-3
    queries = torch.randn(10, 33, generator=gen)
    assert torch.isfinite(queries @ delta).all() and float((queries @ delta).abs().max()) < 1.0
