"""Synthetic ratings with a known ground truth: a known-answer test bed for per-user adaptation.

Why it exists: on real data nobody knows how much a new user's first ratings *can* tell a model, so
"meta-learning helps" is hard to assert. Here the generator knows every user's taste, which part of it
the user attributes reveal and which part only the ratings reveal, so the error of the best
non-adapting predictor and of an oracle can be computed exactly (:func:`adaptation_gain_bound`), and a
meta-learner's adapted error can be placed between them. It is also the demo's offline dataset.

:mod:`~metarec.data.synthetic.truth` holds the config and the truth, :mod:`~metarec.data.synthetic.generate`
draws a dataset from them, :mod:`~metarec.data.synthetic.bounds` computes what a method can reach.
"""

from metarec.data.synthetic.bounds import adaptation_gain_bound, integer_rating_moments
from metarec.data.synthetic.generate import make_synthetic
from metarec.data.synthetic.truth import SyntheticConfig, SyntheticData, SyntheticTruth

__all__ = [
    "SyntheticConfig",
    "SyntheticTruth",
    "SyntheticData",
    "make_synthetic",
    "adaptation_gain_bound",
    "integer_rating_moments",
]
