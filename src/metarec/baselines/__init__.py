"""Non-meta-learning baselines for cold-start recommendation, behind one interface (:class:`Baseline`).

Each is fitted on ``split.train_ratings()`` plus attributes and, at test time, may use a task's support
set (the cold-start call). See :mod:`metarec.baselines.base` for the contract.
"""

from metarec.baselines.attributes import AttributeDesign, attribute_design, item_design
from metarec.baselines.base import Baseline, BaselineBase, TrainStats, train_stats
from metarec.baselines.bias import UserItemBias, UserItemBiasConfig
from metarec.baselines.content import ContentBased, ContentBasedConfig
from metarec.baselines.mf import MatrixFactorization, MatrixFactorizationConfig
from metarec.baselines.simple import (
    GlobalMean,
    GlobalMeanConfig,
    ItemMean,
    ItemMeanConfig,
    MostPopular,
    MostPopularConfig,
)

__all__ = [
    "Baseline", "BaselineBase", "TrainStats", "train_stats",
    "AttributeDesign", "attribute_design", "item_design",
    "GlobalMean", "GlobalMeanConfig", "ItemMean", "ItemMeanConfig", "MostPopular", "MostPopularConfig",
    "UserItemBias", "UserItemBiasConfig", "MatrixFactorization", "MatrixFactorizationConfig",
    "ContentBased", "ContentBasedConfig", "default_baselines",
]


def default_baselines() -> list[Baseline]:
    """One of each baseline with its default config (GlobalNeural lives in :mod:`metarec.meta`)."""
    return [GlobalMean(), ItemMean(), MostPopular(), UserItemBias(), MatrixFactorization(), ContentBased()]
