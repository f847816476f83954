"""Meta-learning: the MAML maths (:mod:`metarec.meta.maml`), its fast kernels, the learner and its trainer."""

from metarec.meta.learner import MetaLearner

__all__ = ["MetaLearner"]
