"""Draw a synthetic dataset from a :class:`SyntheticConfig`: users, items, tastes and ratings.

Every scale is set *empirically* (centred, then rescaled), so the variance shares the config states
hold exactly in each draw, not only in expectation (the model is in :mod:`metarec.data.synthetic.truth`).
The draws come in pieces (users, items, activity, then the ratings of a range of users) so that
:mod:`metarec.data.synthetic.stream` draws the same users and items and streams the ratings to Parquet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from metarec.data.dataset import RatingDataset
from metarec.data.schema import AttributeSpec
from metarec.data.synthetic.truth import SECONDS_PER_YEAR, SyntheticConfig, SyntheticData, SyntheticTruth

_ITEM_BIAS_CONTENT_SHARE = 0.3  # part of the item-bias variance carried by the item's category
_SAMPLING_ROUNDS = 20  # redraw rounds for duplicate (user, item) pairs before the exact fallback


def make_synthetic(config: SyntheticConfig | None = None) -> SyntheticData:
    """Draw users, items, tastes and ratings from ``config``; deterministic in ``config.seed``."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    people = draw_users(rng, cfg)
    catalogue = draw_items(rng, cfg)
    activity = draw_activity(rng, cfg, catalogue)
    partial = SyntheticTruth(**truth_fields(cfg, people, catalogue, activity), rated_user=np.zeros(0, np.int64),
                             rated_item=np.zeros(0, np.int64), rated_time=np.zeros(0, np.int64), rated_value=np.zeros(0))
    row_user, row_item, times, value = draw_ratings(rng, cfg, partial, activity, catalogue, 0, cfg.n_users)
    truth = replace(partial, rated_user=row_user, rated_item=row_item, rated_time=times, rated_value=value)

    # --- frames
    user_ids = np.array([f"u{i}" for i in range(cfg.n_users)], dtype=object)
    item_ids = np.array([f"i{i}" for i in range(cfg.n_items)], dtype=object)
    users = pd.DataFrame(
        {name: pd.array([f"{name}_{c}" for c in codes], dtype=object) for name, codes in people.codes.items()},
        index=pd.Index(user_ids, name="user_id"),
    )
    ratings = pd.DataFrame({
        "user_id": user_ids[row_user], "item_id": item_ids[row_item],
        "rating": value, "timestamp": times,
    })
    low, high = cfg.rating_scale
    dataset = RatingDataset.from_frames(
        "synthetic", ratings, users, item_frame(catalogue, item_ids),
        user_schema={name: "categorical" for name in people.codes}, item_schema=ITEM_SCHEMA,
        rating_scale=(float(low), float(high)), duplicates="error", meta=dataset_meta(cfg, catalogue),
    )
    return SyntheticData(dataset=dataset, truth=truth)


@dataclass(frozen=True, eq=False)
class Users:
    """Every user's attributes (codes per attribute) and taste parts, before any rating is drawn."""

    codes: dict[str, np.ndarray]
    attr_part: np.ndarray
    idio_part: np.ndarray
    bias_attr: np.ndarray
    bias_idio: np.ndarray
    drift: np.ndarray


@dataclass(frozen=True, eq=False)
class Items:
    """Every item's attributes and truth; item indices are in release order."""

    category: np.ndarray
    tags: list[tuple[str, ...]]
    release: np.ndarray
    year: np.ndarray
    factors: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True, eq=False)
class Activity:
    """Who rates how much, and when: per-user rating counts and activity windows, item popularity."""

    pop_weight: np.ndarray
    n_per_user: np.ndarray
    window: np.ndarray
    begin: np.ndarray


def draw_users(rng: np.random.Generator, cfg: SyntheticConfig) -> Users:
    """Attributes, taste = attribute part + idiosyncratic part, the same split for the bias."""
    d, n_users, share = cfg.n_factors, cfg.n_users, cfg.user_attr_share
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
    return Users(user_codes, attr_part, idio_part, bias_attr, bias_idio, drift)


def draw_items(rng: np.random.Generator, cfg: SyntheticConfig) -> Items:
    """Category, tags, release time; factors mostly from attributes."""
    d, n_items = cfg.n_factors, cfg.n_items
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
    return Items(category, tags, release, year, item_factors, item_bias)


def draw_activity(rng: np.random.Generator, cfg: SyntheticConfig, items: Items) -> Activity:
    """Item popularity, each user's number of ratings and activity window."""
    pop_rank = rng.permutation(cfg.n_items) + 1
    pop_weight = pop_rank.astype(np.float64) ** -cfg.popularity_exponent
    t_start, t_end = _year_start(cfg.rating_years[0]), _year_start(cfg.rating_years[1])
    n_min, n_max = cfg.ratings_per_user
    counts = np.arange(n_min, n_max + 1)
    n_per_user = rng.choice(counts, size=cfg.n_users, p=_normalise(counts.astype(np.float64) ** -cfg.ratings_per_user_exponent))
    window = np.minimum(rng.uniform(0.05, 1.0, size=cfg.n_users) * cfg.activity_years * SECONDS_PER_YEAR, t_end - t_start)
    begin = t_start + rng.random(cfg.n_users) * (t_end - t_start - window)
    return Activity(pop_weight, n_per_user, window, begin)


def truth_fields(cfg: SyntheticConfig, people: Users, items: Items, activity: Activity) -> dict:
    """Every :class:`SyntheticTruth` field but the ``rated_*`` ones."""
    share = cfg.user_attr_share
    return dict(
        config=cfg, global_mean=float(cfg.global_mean),
        user_factors=people.attr_part + people.idio_part, user_attribute_part=people.attr_part,
        user_idiosyncratic_part=people.idio_part, user_bias=people.bias_attr + people.bias_idio,
        user_bias_attribute_part=people.bias_attr, user_bias_idiosyncratic_part=people.bias_idio,
        user_drift=people.drift, item_factors=items.factors, item_bias=items.bias, item_release_time=items.release,
        noise_std=float(cfg.noise_std),
        user_reference_time=np.floor(activity.begin + activity.window / 2).astype(np.int64),
        idiosyncratic_var=1.0 - share, bias_idiosyncratic_var=(1.0 - share) * cfg.user_bias_std ** 2,
    )


def draw_ratings(rng: np.random.Generator, cfg: SyntheticConfig, truth: SyntheticTruth, activity: Activity,
                 items: Items, first_user: int, end_user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user, item, time, rating)`` rows of users ``first_user..end_user-1``: grouped by user, in time order.

    Why a user range: the streaming writer draws its users block by block, each block from its own
    stream; :func:`make_synthetic` draws all of them at once."""
    local = np.repeat(np.arange(end_user - first_user), activity.n_per_user[first_user:end_user])
    begin, window = activity.begin[first_user:end_user], activity.window[first_user:end_user]
    times = begin[local] + rng.random(len(local)) * window[local]
    times = _increasing_per_user(local, times)  # rows stay grouped by user, now in time order
    recent = rng.random(len(times)) < cfg.recency_share
    first = np.where(recent, np.searchsorted(items.release, times - cfg.recency_years * SECONDS_PER_YEAR, side="left"), 0)
    row_item = _sample_items(rng, local, times, first, items.release, activity.pop_weight, cfg.n_items)
    keep = row_item >= 0
    row_user, times, row_item = local[keep] + first_user, times[keep], row_item[keep]
    score = truth.expected_rating(row_user, row_item, times)
    low, high = cfg.rating_scale
    value = np.clip(np.rint(score + cfg.noise_std * rng.standard_normal(len(score))), low, high)
    return row_user, row_item, times, value


ITEM_SCHEMA = {"title": "text", "category": "categorical", "tags": "multi", "year": AttributeSpec("numeric", buckets=8)}


def item_frame(items: Items, item_ids: np.ndarray) -> pd.DataFrame:
    """The items table: title, category, tags and release year, indexed by ``item_id``."""
    return pd.DataFrame(
        {
            "title": [f"Synthetic item {i} ({y})" for i, y in enumerate(items.year)],
            "category": [f"c{c}" for c in items.category],
            "tags": items.tags,
            "year": items.year.astype(np.int64),
        },
        index=pd.Index(item_ids, name="item_id"),
    )


def dataset_meta(cfg: SyntheticConfig, items: Items) -> dict:
    """``dataset.meta``: the new-item rule (the newest fifth of release years) and the config."""
    return {"new_item_rule": {"release_year_from": _new_item_year(items.year, 0.2)}, "synthetic": cfg.to_dict()}


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
        rows = _rows_of_users(row_user, row_user[todo])  # only these users' rows changed
        todo = rows[_duplicate_rows(row_user[rows], items[rows], n_items)]
    lo_row = np.searchsorted(row_user, row_user[todo], side="left")  # rows are grouped by user
    hi_row = np.searchsorted(row_user, row_user[todo], side="right")
    for row, lo, hi in zip(todo.tolist(), lo_row.tolist(), hi_row.tolist()):  # exact fallback, rare
        taken = np.delete(items[lo:hi], row - lo)  # the user's other rows
        free = np.ones(n_out[row], bool)
        free[taken[(taken >= 0) & (taken < n_out[row])]] = False
        free = np.flatnonzero(free)
        items[row] = rng.choice(free) if len(free) else -1
    return items


def _duplicate_rows(row_user: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Rows whose (user, item) pair already appeared earlier (first occurrence kept)."""
    key = row_user.astype(np.int64) * (n_items + 1) + items
    valid = items >= 0
    _, first = np.unique(key, return_index=True)
    dup = np.ones(len(key), dtype=bool)
    dup[first] = False
    return np.flatnonzero(dup & valid)


def _rows_of_users(row_user: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Every row of ``users``, in row order (``row_user`` is grouped by user, in increasing order)."""
    users = np.unique(users)
    lo = np.searchsorted(row_user, users, side="left")
    size = np.searchsorted(row_user, users, side="right") - lo
    return np.repeat(lo, size) + np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)


def _increasing_per_user(row_user: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Each user's times sorted and made integer seconds, strictly increasing (``row_user`` is sorted)."""
    order = np.lexsort((times, row_user))
    t = np.floor(times[order]).astype(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(row_user)) + 1]
    rank = np.arange(len(t)) - np.repeat(starts, np.diff(np.r_[starts, len(t)]))
    offset = row_user.astype(np.int64) * (1 << 40)  # keeps each user's running max separate
    return np.maximum.accumulate(t - rank + offset) - offset + rank


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
