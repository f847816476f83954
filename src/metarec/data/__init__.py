"""Data layer: the ratings table, attribute schemas, vocabularies, loaders and the synthetic generator."""

from metarec.data.dataset import RatingDataset
from metarec.data.implicit import is_implicit, to_implicit
from metarec.data.loaders.registry import dataset_names, load_dataset
from metarec.data.schema import AttributeSpec
from metarec.data.vocab import Vocabulary

__all__ = ["RatingDataset", "AttributeSpec", "Vocabulary", "load_dataset", "dataset_names",
           "to_implicit", "is_implicit"]
