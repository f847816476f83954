"""What a synthetic dataset is made of: the generator's config and the ground truth it draws.

Generative model (``d = n_factors``; every scale below is set *empirically*, so the stated variance
shares hold exactly in each draw, not only in expectation)::

    taste     u = A(x_u) + e_u          A: sum of per-attribute embeddings of the user's attributes x_u
                                        e_u: idiosyncratic, N(0, I), revealed only by the ratings
                                        mean-square per dim: A -> share, e_u -> 1 - share (total 1)
    user bias b_u = a(x_u) + c_u        same split: share / 1 - share of user_bias_std**2
    item      v_i = content(category, tags, year) + small noise,  E||v_i||**2 = interaction_std**2
              (item_noise_share of it is noise), b_i ~ item_bias_std (30 % from the category)
    drift     u(t) = u + (t - m_u) / 1 year * w_u,  w_u ~ N(0, drift**2 I): linear, ``drift`` per
              year and dim; m_u is the middle of the user's activity window, so ``u`` is the taste
              there (the user's average taste over their ratings)
    score     s = mu + b_u + b_i + <u(t), v_i>        (SyntheticTruth.expected_rating)
    rating    R = clip(round(s + eps), 1, 5),  eps ~ N(0, noise_std**2)

The integer mapping is "clip then round", i.e. fixed thresholds at 1.5, 2.5, 3.5, 4.5. Which items a
user rates does not depend on the user's taste (popularity and release time only), so the observed
pairs are a fair sample for every predictor :mod:`metarec.data.synthetic.bounds` compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec._io import jsonable
from metarec.data.dataset import RatingDataset
from metarec.errors import ConfigError

SECONDS_PER_YEAR = 365.25 * 86400.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator; the same config (seed included) always gives the same frames."""

    n_users: int = 1000
    n_items: int = 500
    n_factors: int = 8
    # fraction of taste variance (factors and user bias) that the user attributes explain
    user_attr_share: float = 0.5
    # (name, number of values) per categorical user attribute; values are "<name>_<k>"
    user_attributes: tuple[tuple[str, int], ...] = (("age_group", 5), ("region", 8), ("gender", 2))
    n_categories: int = 10
    n_tags: int = 30
    tags_per_item: tuple[int, int] = (1, 4)
    # fraction of the item-factor mean square that the item attributes do NOT explain
    item_noise_share: float = 0.1
    global_mean: float = 3.6
    user_bias_std: float = 0.5
    item_bias_std: float = 0.4
    interaction_std: float = 0.8  # RMS of <u, v>: how much taste matters
    noise_std: float = 0.5
    popularity_exponent: float = 1.0  # item sampling weight ~ popularity_rank ** -exponent (Zipf)
    # share of ratings drawn among items released in the last recency_years (people rate what is new),
    # so that the newest items - the new-item scenarios - get ratings
    recency_share: float = 0.3
    recency_years: float = 2.0
    ratings_per_user: tuple[int, int] = (15, 80)
    ratings_per_user_exponent: float = 1.5  # P(n) ~ n ** -exponent on [min, max]: heavy tailed
    drift: float = 0.0  # taste move per year, std per dim (taste itself has mean square 1 per dim)
    release_years: tuple[int, int] = (1990, 2020)  # items released uniformly in [Jan 1 y0, Jan 1 y1)
    rating_years: tuple[int, int] = (2000, 2021)  # ratings happen in [Jan 1 y0, Jan 1 y1)
    activity_years: float = 2.0  # a user's ratings fall in one window of at most this length
    rating_scale: tuple[int, int] = (1, 5)
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(message: str) -> None:
            raise ConfigError(f"SyntheticConfig: {message}")

        if min(self.n_users, self.n_items, self.n_factors) < 1:
            bad("n_users, n_items and n_factors must be >= 1")
        if not 0.0 <= self.user_attr_share <= 1.0:
            bad(f"user_attr_share must be in [0, 1], got {self.user_attr_share}")
        if not 0.0 <= self.item_noise_share <= 1.0:
            bad(f"item_noise_share must be in [0, 1], got {self.item_noise_share}")
        if not self.user_attributes or any(n < 1 for _, n in self.user_attributes):
            bad("user_attributes needs at least one (name, n_values >= 1) pair")
        if self.n_categories < 1 or self.n_tags < 1:
            bad("n_categories and n_tags must be >= 1")
        lo, hi = self.tags_per_item
        if not 1 <= lo <= hi <= self.n_tags:
            bad(f"tags_per_item must satisfy 1 <= min <= max <= n_tags, got {self.tags_per_item}")
        lo, hi = self.ratings_per_user
        if not 1 <= lo <= hi <= self.n_items:
            bad(f"ratings_per_user must satisfy 1 <= min <= max <= n_items, got {self.ratings_per_user}")
        if min(self.user_bias_std, self.item_bias_std, self.interaction_std, self.noise_std, self.drift) < 0:
            bad("standard deviations and drift must be >= 0")
        if self.popularity_exponent < 0:
            bad("popularity_exponent must be >= 0")
        if not 0.0 <= self.recency_share <= 1.0 or self.recency_years <= 0:
            bad("recency_share must be in [0, 1] and recency_years > 0")
        r0, r1 = self.release_years
        a0, a1 = self.rating_years
        if not (r0 < r1 and a0 < a1 and r0 < a0):
            bad("need release_years[0] < release_years[1], rating_years[0] < rating_years[1] and "
                "release_years[0] < rating_years[0] (something must be out when ratings start)")
        if self.activity_years <= 0:
            bad("activity_years must be > 0")
        if self.rating_scale[0] >= self.rating_scale[1]:
            bad(f"rating_scale must be (low, high) with low < high, got {self.rating_scale}")

    def to_dict(self) -> dict:
        """JSON-friendly copy (lists for tuples): what goes to ``dataset.meta["synthetic"]``."""
        return jsonable(self)


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The ground truth behind a synthetic dataset; indices follow ``dataset.user_vocab`` / ``item_vocab``.

    ``user_factors`` is the taste at ``user_reference_time`` (the middle of the user's activity
    window; what ``expected_rating`` uses with ``time=None``); ``user_attribute_part +
    user_idiosyncratic_part == user_factors`` and ``user_bias_attribute_part +
    user_bias_idiosyncratic_part == user_bias``. ``user_drift`` is the taste move per year (zeros when
    ``config.drift == 0``). ``rated_*`` are the generated interactions, in the dataset's row order.
    """

    config: SyntheticConfig
    global_mean: float
    user_factors: np.ndarray  # (n_users, d)
    user_attribute_part: np.ndarray  # (n_users, d): A(x_u) = E[u | attributes]
    user_idiosyncratic_part: np.ndarray  # (n_users, d): e_u, revealed only by ratings
    user_bias: np.ndarray  # (n_users,)
    user_bias_attribute_part: np.ndarray
    user_bias_idiosyncratic_part: np.ndarray
    user_drift: np.ndarray  # (n_users, d)
    item_factors: np.ndarray  # (n_items, d)
    item_bias: np.ndarray  # (n_items,)
    item_release_time: np.ndarray  # (n_items,) int64 unix seconds
    noise_std: float
    user_reference_time: np.ndarray  # (n_users,) unix seconds: when the taste equals user_factors
    idiosyncratic_var: float  # population variance per dim of e_u: 1 - share
    bias_idiosyncratic_var: float  # population variance of the idiosyncratic user bias
    rated_user: np.ndarray
    rated_item: np.ndarray
    rated_time: np.ndarray
    rated_value: np.ndarray

    def years_from_reference(self, user_idx: np.ndarray | int, time: np.ndarray | float) -> np.ndarray:
        """``(time - m_u)`` in years: how far the user's taste has drifted from ``user_factors``."""
        ref = self.user_reference_time[np.asarray(user_idx, dtype=np.int64)]
        return (np.asarray(time, dtype=np.float64) - ref) / SECONDS_PER_YEAR

    def taste(self, user_idx: np.ndarray | int, time: np.ndarray | float | None = None) -> np.ndarray:
        """The user's taste vector at ``time`` (the mid-period taste when ``time`` is None)."""
        users = np.asarray(user_idx, dtype=np.int64)
        u = self.user_factors[users]
        if time is None:
            return u
        shift = self.years_from_reference(users, time)[..., None] * self.user_drift[users]
        return u + shift

    def expected_rating(
        self, user_idx: np.ndarray | int, item_idx: np.ndarray | int, time: np.ndarray | float | None = None
    ) -> np.ndarray:
        """The noiseless continuous score ``mu + b_u + b_i + <u(t), v_i>`` (before noise, rounding, clipping)."""
        users = np.asarray(user_idx, dtype=np.int64)
        items = np.asarray(item_idx, dtype=np.int64)
        u = self.taste(users, time)
        return (self.global_mean + self.user_bias[users] + self.item_bias[items]
                + np.sum(u * self.item_factors[items], axis=-1))

    def attribute_rating(
        self, user_idx: np.ndarray | int, item_idx: np.ndarray | int
    ) -> np.ndarray:
        """The best attribute-only score ``E[s | x_u, item]``: the truth minus everything idiosyncratic."""
        users = np.asarray(user_idx, dtype=np.int64)
        items = np.asarray(item_idx, dtype=np.int64)
        return (self.global_mean + self.user_bias_attribute_part[users] + self.item_bias[items]
                + np.sum(self.user_attribute_part[users] * self.item_factors[items], axis=-1))

    def attribute_uncertainty(
        self, user_idx: np.ndarray | int, item_idx: np.ndarray | int, time: np.ndarray | float | None = None
    ) -> np.ndarray:
        """Prior variance of the score part attributes cannot see: ``var(c) + var(e)|v|^2 (+ drift)``."""
        items = np.asarray(item_idx, dtype=np.int64)
        norm2 = np.sum(self.item_factors[items] ** 2, axis=-1)
        var = self.bias_idiosyncratic_var + self.idiosyncratic_var * norm2
        if time is not None and self.config.drift > 0:
            var = var + self.years_from_reference(user_idx, time) ** 2 * self.config.drift ** 2 * norm2
        return var


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """What :func:`make_synthetic` returns: the dataset every other module consumes, plus its truth."""

    dataset: RatingDataset
    truth: SyntheticTruth
