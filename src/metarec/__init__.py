"""metarec: cold-start recommendation by meta-learning.

Every user is a learning task; a model meta-trained with MAML (or Reptile, Meta-SGD) adapts to a new
user's first few ratings in a few gradient steps. The package is laid out as the pipeline:
data -> tasks -> models -> meta -> baselines / eval -> serve.
"""

from metarec.errors import DataError, MetarecError, ConfigError
from metarec.version import __version__
__all__ = ["DataError", "MetarecError", "ConfigError", "__version__"]
