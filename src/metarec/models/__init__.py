"""Rating models used functionally (parameters as a dict through ``torch.func.functional_call``)."""

from metarec.models.attention import AttentionRec
from metarec.models.base import Context, Params, RatingModel
from metarec.models.config import MODEL_KINDS, ModelConfig, build_model
from metarec.models.feature_mlp import FeatureMLP
from metarec.models.neural_cf import NeuralCF

__all__ = ["AttentionRec", "Context", "Params", "RatingModel", "MODEL_KINDS", "ModelConfig", "build_model", "FeatureMLP", "NeuralCF"]
