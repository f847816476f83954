"""Synthetic ratings with a known ground truth: a known-answer test bed for per-user adaptation.

Why it exists: on real data nobody knows how much a new user's first ratings *can* tell a model, so
"meta-learning helps" is hard to assert. Here the generator knows every user's taste, which part of it
the user attributes reveal and which part only the ratings reveal, so the error of the best
non-adapting predictor and of an oracle can be computed exactly (:func:`adaptation_gain_bound`), and a
meta-learner's adapted error can be placed between them. It is also the demo's offline dataset.

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
pairs are a fair sample for every predictor below.

What adapting per user can gain (``s2 = noise_std**2``; ``share = user_attr_share``):

* oracle (knows ``s``): continuous MSE ``s2``; on integer ratings the best prediction is
  ``E[R | s]`` and its MSE is ``E[Var(R | s)]``, about ``s2 + 1/12`` away from the scale's ends
  (rounding adds ~1/12, clipping removes some at 1 and 5);
* best attribute-only predictor (knows ``mu``, item truth, ``A(x_u)``, ``a(x_u)``, the time, but not
  ``c_u``, ``e_u``, ``w_u``): its extra squared error is the variance of what only the ratings reveal,
  ``E[(c_u + <e_u, v_i> + dt <w_u, v_i>)**2]
  = (1 - share) * (user_bias_std**2 + interaction_std**2) + drift**2 * E[dt**2] * interaction_std**2``
  with ``dt = (t - m_u)`` in years;
* global mean: the whole score variance
  ``user_bias_std**2 + item_bias_std**2 + interaction_std**2 + s2 (+ drift term)``.

A method that adapts on a user's ratings can at most close the gap between attribute-only and oracle;
with ``k`` ratings the Gaussian posterior over ``(c_u, e_u)`` shows how much is within reach
(``adapted_rmse``). :func:`adaptation_gain_bound` computes all of these exactly from the truth on the
observed pairs (expectations over the rating noise in closed form, rounding and clipping included).
Default config (seed 0), RMSE on each user's ratings minus 5 support ratings: oracle 0.540, Gaussian
posterior after 5 ratings 0.728, attribute-only 0.807, global mean 1.063 (more in ``docs/synthetic.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.data.schema import AttributeSpec
from metarec.errors import ConfigError

__all__ = [
    "SyntheticConfig",
    "SyntheticTruth",
    "SyntheticData",
    "make_synthetic",
    "adaptation_gain_bound",
    "integer_rating_moments",
]

_ITEM_BIAS_CONTENT_SHARE = 0.3  # part of the item-bias variance carried by the item's category
_YEAR = 365.25 * 86400.0
_SAMPLING_ROUNDS = 20  # redraw rounds for duplicate (user, item) pairs before the exact fallback


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
        return _jsonable(asdict(self))


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

    @property
    def rating_levels(self) -> np.ndarray:
        low, high = self.config.rating_scale
        return np.arange(low, high + 1, dtype=np.float64)

    def years_from_reference(self, user_idx: np.ndarray | int, time: np.ndarray | float) -> np.ndarray:
        """``(time - m_u)`` in years: how far the user's taste has drifted from ``user_factors``."""
        ref = self.user_reference_time[np.asarray(user_idx, dtype=np.int64)]
        return (np.asarray(time, dtype=np.float64) - ref) / _YEAR

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


# ---------------------------------------------------------------------------------------------- generator
def make_synthetic(config: SyntheticConfig | None = None) -> SyntheticData:
    """Draw users, items, tastes and ratings from ``config``; deterministic in ``config.seed``."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    d, n_users, n_items = cfg.n_factors, cfg.n_users, cfg.n_items
    share = cfg.user_attr_share

    # --- users: attributes, taste = attribute part + idiosyncratic part, same split for the bias
    user_codes: dict[str, np.ndarray] = {}
    a_raw = np.zeros((n_users, d))
    ab_raw = np.zeros(n_users)
    for name, n_values in cfg.user_attributes:
        probs = rng.dirichlet(np.full(n_values, 5.0))
        codes = rng.choice(n_values, size=n_users, p=probs)
        user_codes[name] = codes
        a_raw += rng.standard_normal((n_values, d))[codes]
        ab_raw += rng.standard_normal(n_values)[codes]
    e_raw = rng.standard_normal((n_users, d))
    cb_raw = rng.standard_normal(n_users)
    attr_part = _scale_to(_center(a_raw), share)
    idio_part = _scale_to(_center(e_raw), 1.0 - share)
    bias_attr = _scale_to(_center(ab_raw), share * cfg.user_bias_std ** 2)
    bias_idio = _scale_to(_center(cb_raw), (1.0 - share) * cfg.user_bias_std ** 2)
    drift = _scale_to(_center(rng.standard_normal((n_users, d))), cfg.drift ** 2)

    # --- items: category, tags, release time; factors mostly from attributes
    category = rng.choice(cfg.n_categories, size=n_items, p=rng.dirichlet(np.full(cfg.n_categories, 3.0)))
    tag_weight = np.arange(1, cfg.n_tags + 1, dtype=np.float64) ** -0.8
    tag_weight = tag_weight[rng.permutation(cfg.n_tags)]
    tag_weight /= tag_weight.sum()
    lo, hi = cfg.tags_per_item
    sizes = np.arange(lo, hi + 1)
    n_tags_of = rng.choice(sizes, size=n_items, p=_normalise(sizes.astype(np.float64) ** -1.5))
    # weighted sampling without replacement: the n smallest Exp/weight keys (Efraimidis-Spirakis)
    keys = rng.exponential(size=(n_items, cfg.n_tags)) / tag_weight
    tag_rank = np.argsort(keys, axis=1)
    tags = [tuple(f"t{k}" for k in sorted(tag_rank[i, : n_tags_of[i]])) for i in range(n_items)]
    r_start, r_end = _year_start(cfg.release_years[0]), _year_start(cfg.release_years[1])
    release = np.sort(rng.integers(r_start, r_end, size=n_items))  # item ids in release order
    year = _years(release)
    year_z = (year - year.mean()) / (year.std() or 1.0)

    tag_emb = rng.standard_normal((cfg.n_tags, d))
    tag_sum = np.zeros((n_items, d))
    for i in range(n_items):
        tag_sum[i] = tag_emb[tag_rank[i, : n_tags_of[i]]].sum(axis=0) / math.sqrt(n_tags_of[i])
    content = (rng.standard_normal((cfg.n_categories, d))[category] + tag_sum
               + year_z[:, None] * 0.5 * rng.standard_normal(d))
    target = cfg.interaction_std ** 2 / d  # mean square per dim so that E|v|^2 = interaction_std^2
    item_factors = (_scale_to(_center(content), (1.0 - cfg.item_noise_share) * target)
                    + _scale_to(_center(rng.standard_normal((n_items, d))), cfg.item_noise_share * target))
    item_bias = (_scale_to(_center(rng.standard_normal(cfg.n_categories)[category]),
                           _ITEM_BIAS_CONTENT_SHARE * cfg.item_bias_std ** 2)
                 + _scale_to(_center(rng.standard_normal(n_items)), (1 - _ITEM_BIAS_CONTENT_SHARE) * cfg.item_bias_std ** 2))

    # --- who rates what, when: activity window per user, items by popularity among those released
    pop_rank = rng.permutation(n_items) + 1
    pop_weight = pop_rank.astype(np.float64) ** -cfg.popularity_exponent
    t_start, t_end = _year_start(cfg.rating_years[0]), _year_start(cfg.rating_years[1])
    n_min, n_max = cfg.ratings_per_user
    counts = np.arange(n_min, n_max + 1)
    n_per_user = rng.choice(counts, size=n_users, p=_normalise(counts.astype(np.float64) ** -cfg.ratings_per_user_exponent))
    window = np.minimum(rng.uniform(0.05, 1.0, size=n_users) * cfg.activity_years * _YEAR, t_end - t_start)
    begin = t_start + rng.random(n_users) * (t_end - t_start - window)
    row_user = np.repeat(np.arange(n_users), n_per_user)
    times = begin[row_user] + rng.random(len(row_user)) * window[row_user]
    times = _increasing_per_user(row_user, times)  # rows stay grouped by user, now in time order
    recent = rng.random(len(times)) < cfg.recency_share
    first = np.where(recent, np.searchsorted(release, times - cfg.recency_years * _YEAR, side="left"), 0)
    row_item = _sample_items(rng, row_user, times, first, release, pop_weight, n_items)
    keep = row_item >= 0
    row_user, times, row_item = row_user[keep], times[keep], row_item[keep]

    truth_kwargs = dict(
        config=cfg, global_mean=float(cfg.global_mean),
        user_factors=attr_part + idio_part, user_attribute_part=attr_part, user_idiosyncratic_part=idio_part,
        user_bias=bias_attr + bias_idio, user_bias_attribute_part=bias_attr, user_bias_idiosyncratic_part=bias_idio,
        user_drift=drift, item_factors=item_factors, item_bias=item_bias, item_release_time=release,
        noise_std=float(cfg.noise_std), user_reference_time=np.floor(begin + window / 2).astype(np.int64),
        idiosyncratic_var=1.0 - share, bias_idiosyncratic_var=(1.0 - share) * cfg.user_bias_std ** 2,
    )
    partial = SyntheticTruth(**truth_kwargs, rated_user=row_user, rated_item=row_item, rated_time=times,
                             rated_value=np.zeros(0))
    score = partial.expected_rating(row_user, row_item, times)
    low, high = cfg.rating_scale
    value = np.clip(np.rint(score + cfg.noise_std * rng.standard_normal(len(score))), low, high)
    truth = replace(partial, rated_value=value)

    # --- frames
    user_ids = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    item_ids = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    users = pd.DataFrame(
        {name: pd.array([f"{name}_{c}" for c in codes], dtype=object) for name, codes in user_codes.items()},
        index=pd.Index(user_ids, name="user_id"),
    )
    items = pd.DataFrame(
        {
            "title": [f"Synthetic item {i} ({y})" for i, y in enumerate(year)],
            "category": [f"c{c}" for c in category],
            "tags": tags,
            "year": year.astype(np.int64),
        },
        index=pd.Index(item_ids, name="item_id"),
    )
    ratings = pd.DataFrame({
        "user_id": user_ids[row_user], "item_id": item_ids[row_item],
        "rating": value, "timestamp": times,
    })
    meta = {
        "new_item_rule": {"release_year_from": _new_item_year(year, 0.2)},
        "synthetic": cfg.to_dict(),
    }
    dataset = RatingDataset.from_frames(
        "synthetic", ratings, users, items,
        user_schema={name: "categorical" for name in user_codes},
        item_schema={"title": "text", "category": "categorical", "tags": "multi",
                     "year": AttributeSpec("numeric", buckets=8)},
        rating_scale=(float(low), float(high)), duplicates="error", meta=meta,
    )
    return SyntheticData(dataset=dataset, truth=truth)


def _sample_items(rng: np.random.Generator, row_user: np.ndarray, times: np.ndarray, first: np.ndarray,
                  release: np.ndarray, weight: np.ndarray, n_items: int) -> np.ndarray:
    """One item per row among items ``first..`` released by the row's time, popularity-weighted,
    distinct within a user.

    ``release`` is sorted (item index == release order), so a row's candidates are a contiguous range
    and one ``searchsorted`` on the cumulative weights draws for every row at once; duplicate
    (user, item) rows are redrawn (halfway from all released items), and the few left get a uniform unrated item
    among all released ones. Returns -1 for a row with nothing left to rate (tiny catalogues only).
    """
    n_out = np.searchsorted(release, times, side="right")  # items released at or before t
    first = np.where(first < n_out, first, 0)  # nothing recent: any released item
    cum = np.r_[0.0, np.cumsum(weight)]  # cum[k] = weight of items 0..k-1
    items = np.full(len(row_user), -1, dtype=np.int64)
    todo = np.flatnonzero(n_out > 0)
    for round_ in range(_SAMPLING_ROUNDS):
        if not len(todo):
            break
        if round_ == _SAMPLING_ROUNDS // 2:
            first[todo] = 0  # a crowded recent range: widen to every released item
        lo, hi = first[todo], n_out[todo]
        x = cum[lo] + rng.random(len(todo)) * (cum[hi] - cum[lo])
        items[todo] = np.clip(np.searchsorted(cum, x, side="right") - 1, lo, hi - 1)
        todo = _duplicate_rows(row_user, items, n_items)
    for row in todo:  # exact fallback, rare
        taken = set(items[(row_user == row_user[row]) & (np.arange(len(items)) != row)].tolist())
        free = [i for i in range(n_out[row]) if i not in taken]
        items[row] = rng.choice(free) if free else -1
    return items


def _duplicate_rows(row_user: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Rows whose (user, item) pair already appeared earlier (first occurrence kept)."""
    key = row_user.astype(np.int64) * (n_items + 1) + items
    valid = items >= 0
    _, first = np.unique(key, return_index=True)
    dup = np.ones(len(key), dtype=bool)
    dup[first] = False
    return np.flatnonzero(dup & valid)


def _increasing_per_user(row_user: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Each user's times sorted and made integer seconds, strictly increasing (``row_user`` is sorted)."""
    order = np.lexsort((times, row_user))
    t = np.floor(times[order]).astype(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(row_user)) + 1]
    rank = np.arange(len(t)) - np.repeat(starts, np.diff(np.r_[starts, len(t)]))
    offset = row_user.astype(np.int64) * (1 << 40)  # keeps each user's running max separate
    return np.maximum.accumulate(t - rank + offset) - offset + rank


# ---------------------------------------------------------------------------------------------- bounds
def integer_rating_moments(score: np.ndarray, std: np.ndarray | float,
                           scale: tuple[int, int] = (1, 5)) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``clip(round(score + N(0, std^2)), low, high)``, in closed form.

    The mean is the best squared-error prediction of an integer rating given a Gaussian belief about
    its continuous score; the variance is that prediction's expected squared error.
    """
    score = np.asarray(score, dtype=np.float64)
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), score.shape)
    low, high = scale
    levels = np.arange(low, high + 1, dtype=np.float64)
    cuts = levels[:-1] + 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (cuts[None, :] - score.reshape(-1, 1)) / std.reshape(-1, 1)
    # std == 0: a step function
    z = np.where(std.reshape(-1, 1) > 0, z, np.where(cuts[None, :] > score.reshape(-1, 1), np.inf, -np.inf))
    cdf = _norm_cdf(z)
    probs = np.diff(np.concatenate([np.zeros((len(cdf), 1)), cdf, np.ones((len(cdf), 1))], axis=1), axis=1)
    mean = probs @ levels
    var = np.maximum(probs @ levels ** 2 - mean ** 2, 0.0)
    return mean.reshape(score.shape), var.reshape(score.shape)


def adaptation_gain_bound(
    truth: SyntheticTruth,
    *,
    support_size: int = 5,
    users: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """RMSEs a method can hope for on this data, computed from the truth (see the module docstring).

    Pairs: each user's generated ratings minus ``support_size`` random ones (the adaptation set; users
    with no rating left are skipped), restricted to ``users`` when given. Every ``*_rmse`` is the
    expected RMSE over the rating noise on those pairs, rounding and clipping to integer ratings
    included (closed form, no sampling noise); ``*_rmse_continuous`` leaves rounding out.

    * ``oracle_rmse``: knows the score; the irreducible error;
    * ``attribute_rmse``: best predictor from user attributes + item truth (no per-user adaptation);
    * ``adapted_rmse``: Gaussian posterior over the idiosyncratic bias and taste after the
      ``support_size`` observed ratings (ignores drift) - what adaptation on that many ratings reaches;
    * ``global_mean_rmse``: one constant for everything;
    * ``attribute_extra_mse`` / ``attribute_extra_mse_theory``: realised and population value of
      ``E[(c_u + <e_u, v_i> + drift term)^2]``;
    * ``gap_closed_by_adaptation``: ``(attribute - adapted) / (attribute - oracle)`` in RMSE.
    """
    cfg = truth.config
    scale = cfg.rating_scale
    rng = np.random.default_rng(seed)
    user, item, time, value = truth.rated_user, truth.rated_item, truth.rated_time, truth.rated_value
    order = np.lexsort((rng.random(len(user)), user))  # random order within each user
    starts = np.r_[0, np.flatnonzero(np.diff(user[order])) + 1] if len(user) else np.zeros(0, np.int64)
    rank = np.empty(len(user), dtype=np.int64)
    rank[order] = np.arange(len(user)) - np.repeat(starts, np.diff(np.r_[starts, len(user)]))
    is_support = rank < support_size
    query = ~is_support
    if users is not None:
        query &= np.isin(user, np.asarray(users, dtype=np.int64))
    if not query.any():
        raise ConfigError("adaptation_gain_bound: no query pairs left (too few ratings or no such users)")

    qu, qi, qt = user[query], item[query], time[query]
    s = truth.expected_rating(qu, qi, qt)
    noise = truth.noise_std
    r_mean, r_var = integer_rating_moments(s, noise, scale)  # what the rating is, in expectation

    def rmse_of(prediction: np.ndarray) -> float:
        return float(np.sqrt(np.mean(r_var + (r_mean - prediction) ** 2)))

    s_attr = truth.attribute_rating(qu, qi)
    attr_var = truth.attribute_uncertainty(qu, qi, qt)
    p_attr, _ = integer_rating_moments(s_attr, np.sqrt(noise ** 2 + attr_var), scale)
    constant = float(np.mean(r_mean))
    out: dict[str, float] = {
        "noise_std": float(noise),
        "oracle_rmse": float(np.sqrt(np.mean(r_var))),
        "attribute_rmse": rmse_of(p_attr),
        "global_mean_rmse": rmse_of(np.full_like(s, constant)),
        "oracle_rmse_continuous": float(noise),
        "attribute_rmse_continuous": float(np.sqrt(noise ** 2 + np.mean((s - s_attr) ** 2))),
        "global_mean_rmse_continuous": float(np.sqrt(noise ** 2 + np.var(s))),
        "attribute_extra_mse": float(np.mean((s - s_attr) ** 2)),
        "attribute_extra_mse_theory": float(
            (1 - cfg.user_attr_share) * (cfg.user_bias_std ** 2 + cfg.interaction_std ** 2)
            + cfg.drift ** 2 * np.mean(truth.years_from_reference(qu, qt) ** 2) * cfg.interaction_std ** 2),
        "support_size": float(support_size),
        "n_pairs": float(query.sum()),
        "n_users": float(len(np.unique(qu))),
    }
    if support_size > 0:
        p_adapt = _posterior_prediction(truth, user, item, value, is_support, qu, qi, scale)
        out["adapted_rmse"] = rmse_of(p_adapt)
        gap = out["attribute_rmse"] - out["oracle_rmse"]
        out["gap_closed_by_adaptation"] = float((out["attribute_rmse"] - out["adapted_rmse"]) / gap) if gap > 1e-12 else float("nan")
    return out


def _posterior_prediction(truth: SyntheticTruth, user: np.ndarray, item: np.ndarray, value: np.ndarray,
                          is_support: np.ndarray, qu: np.ndarray, qi: np.ndarray,
                          scale: tuple[int, int]) -> np.ndarray:
    """Bayes-linear update of z = (c_u, e_u) from each user's support ratings, then E[R] per query pair.

    Prior z ~ N(0, diag(var_c, var_e I)); observation y - attribute score = [1, v] . z + noise with
    variance noise^2 + 1/12 (rounding treated as extra Gaussian noise). Closed form, batched by user.
    """
    n_users, d = truth.user_factors.shape
    prior = np.r_[truth.bias_idiosyncratic_var, np.full(d, truth.idiosyncratic_var)]
    obs_var = truth.noise_std ** 2 + 1.0 / 12.0
    su, si = user[is_support], item[is_support]
    x = np.concatenate([np.ones((len(su), 1)), truth.item_factors[si]], axis=1)
    y = value[is_support] - truth.attribute_rating(su, si)
    precision = np.zeros((n_users, d + 1, d + 1))
    np.add.at(precision, su, x[:, :, None] * x[:, None, :] / obs_var)
    precision += np.diag(np.where(prior > 0, 1.0 / np.maximum(prior, 1e-300), 1e12))[None]
    rhs = np.zeros((n_users, d + 1))
    np.add.at(rhs, su, x * (y / obs_var)[:, None])
    cov = np.linalg.inv(precision)
    z = np.einsum("nij,nj->ni", cov, rhs)
    xq = np.concatenate([np.ones((len(qu), 1)), truth.item_factors[qi]], axis=1)
    mean = truth.attribute_rating(qu, qi) + np.einsum("ni,ni->n", xq, z[qu])
    var = np.einsum("ni,nij,nj->n", xq, cov[qu], xq)
    pred, _ = integer_rating_moments(mean, np.sqrt(truth.noise_std ** 2 + np.maximum(var, 0.0)), scale)
    return pred


# ---------------------------------------------------------------------------------------------- helpers
_ERF = np.frompyfunc(math.erf, 1, 1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF without scipy (not a dependency); infinities map to 0 and 1."""
    return 0.5 * (1.0 + _ERF(np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64))


def _center(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def _scale_to(x: np.ndarray, mean_square: float) -> np.ndarray:
    """Rescale so that the mean of ``x**2`` (over all entries) equals ``mean_square`` exactly."""
    current = float(np.mean(x ** 2))
    if mean_square <= 0 or current <= 0:
        return np.zeros_like(x)
    return x * math.sqrt(mean_square / current)


def _normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


def _year_start(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp())


def _years(seconds: np.ndarray) -> np.ndarray:
    return np.asarray(seconds, dtype="int64").astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970


def _new_item_year(year: np.ndarray, fraction: float) -> int:
    """The year Y for which the share of items released in Y or later is closest to ``fraction``."""
    candidates = np.unique(year)
    shares = np.array([(year >= y).mean() for y in candidates])
    return int(candidates[np.argmin(np.abs(shares - fraction))])


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
