"""What a method can reach on synthetic data, computed exactly from the truth.

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

import numpy as np

from metarec.data.synthetic.truth import SyntheticTruth
from metarec.errors import ConfigError


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


_ERF = np.frompyfunc(math.erf, 1, 1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF without scipy (not a dependency); infinities map to 0 and 1."""
    return 0.5 * (1.0 + _ERF(np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64))
