"""Batched ridge solves shared by the baselines and the meta-learners' item fold-in.

Why here: every baseline that personalises does the same thing - one small ridge regression per user
(ALS steps, fold-in of a new user's support set, content profiles). Solving them one by one in Python is
what makes naive fold-in slow; here all of them are built with one sparse-dense product and solved with
one stacked ``np.linalg.solve``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsmr

# Bound on float64 entries held at once by a chunk of per-row outer products / Gram matrices (~160 MB).
_CHUNK_ENTRIES = 20_000_000
# Largest Gram matrix solved densely by ``ridge_fit``; beyond it, LSMR per target column.
_DENSE_GRAM_MAX = 4000


def group_matrix(ptr: np.ndarray, cols: np.ndarray, values: np.ndarray | None, n_cols: int) -> sp.csr_matrix:
    """CSR matrix of ``len(ptr) - 1`` groups x ``n_cols``: row ``t`` holds ``values`` at ``cols[ptr[t]:ptr[t+1]]``.

    A TaskSet's support arrays are already CSR; this wraps them without copying the structure by hand.
    Repeated columns in a row are summed, which is what least squares over duplicated rows needs.
    """
    data = np.ones(len(cols)) if values is None else np.asarray(values, dtype=np.float64)
    m = sp.csr_matrix(
        (data, np.asarray(cols, dtype=np.int64), np.asarray(ptr, dtype=np.int64)), shape=(len(ptr) - 1, n_cols)
    )
    m.sum_duplicates()
    return m


def batched_ridge(
    counts: sp.csr_matrix,
    targets: sp.csr_matrix,
    features: np.ndarray,
    penalty: np.ndarray,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Solve, for every row ``t`` of ``counts``, ``min_w sum_i c_ti (y_ti - f_i . w)^2 + sum_d p_d (w_d - w0_td)^2``.

    ``counts`` (T x n) holds how often entity ``i`` enters group ``t`` (usually 0/1), ``targets`` (T x n)
    the *sum* of the group's targets on entity ``i`` (same sparsity), ``features`` (n x d) each entity's
    regressors, ``penalty`` (d,) the prior precision per coordinate, ``prior`` (T x d) the prior means
    (zero if None). Normal equations: ``G_t = sum_i c_ti f_i f_i^T`` for all ``t`` at once is
    ``counts @ vec(f_i f_i^T)`` - one sparse-dense product, chunked over entities to bound memory.
    Returns ``W`` (T x d). Groups with no data return their prior.
    """
    n_groups = counts.shape[0]
    features = np.asarray(features, dtype=np.float64)
    d = features.shape[1]
    penalty = np.broadcast_to(np.asarray(penalty, dtype=np.float64), (d,))
    used = np.unique(counts.indices)  # only entities some group touches
    counts_csc = sp.csc_matrix(counts)[:, used]
    f_used = features[used]
    rhs = np.asarray(sp.csc_matrix(targets)[:, used] @ f_used)
    if prior is not None:
        rhs = rhs + np.asarray(prior, dtype=np.float64) * penalty
    gram = np.zeros((n_groups, d * d))
    step = max(1, _CHUNK_ENTRIES // (d * d))
    for start in range(0, len(used), step):
        block = f_used[start : start + step]
        outer = (block[:, :, None] * block[:, None, :]).reshape(len(block), d * d)
        gram += np.asarray(counts_csc[:, start : start + step] @ outer)
    gram = gram.reshape(n_groups, d, d)
    out = np.empty((n_groups, d))
    rows = max(1, _CHUNK_ENTRIES // (d * d))
    for start in range(0, n_groups, rows):
        sl = slice(start, start + rows)
        out[sl] = solve_ridge(gram[sl], rhs[sl], penalty)
    return out


def solve_ridge(gram: np.ndarray, rhs: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """``(G_t + diag(penalty))^-1 b_t`` for stacked normal equations (``gram`` [T, d, d], ``rhs`` [T, d]):
    the solve of :func:`batched_ridge`, on its own for callers that accumulate ``G`` and ``b`` themselves
    (ratings of an item arriving in several calls). ``gram`` is left as it was."""
    d = gram.shape[-1]
    penalised = np.array(gram, dtype=np.float64)
    penalised[..., np.arange(d), np.arange(d)] += np.broadcast_to(np.asarray(penalty, dtype=np.float64), (d,))
    return np.linalg.solve(penalised, np.asarray(rhs, dtype=np.float64)[..., None])[..., 0]


def pooled_item_ridge(
    task: np.ndarray,
    item: np.ndarray,
    residual: np.ndarray,
    task_features: np.ndarray,
    penalty: np.ndarray,
    prior: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The item-side fold-in: per distinct ``item``, ridge regression of its ``residual`` ratings on the
    ``task_features`` (n_tasks x d) of the tasks that gave them. Returns ``(items, W)``: the distinct items
    (sorted) and their solutions (len(items) x d), with ``prior`` (len(items) x d) as prior means."""
    rows = np.unique(item)
    local = np.searchsorted(rows, item)
    shape = (len(rows), len(task_features))
    counts = sp.csr_matrix((np.ones(len(item)), (local, task)), shape=shape)
    target = sp.csr_matrix((np.asarray(residual, dtype=np.float64), (local, task)), shape=shape)
    return rows, batched_ridge(counts, target, task_features, penalty, prior)


def ridge_fit(
    design: sp.spmatrix,
    targets: np.ndarray,
    reg: float,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ridge regression ``targets ~ intercept + design @ coef`` with an unpenalised intercept.

    ``design`` stays sparse (one-hot / multi-hot attributes can have thousands of columns); only a Gram
    matrix is made dense - the primal ``p x p`` or the dual ``n x n``, whichever is smaller - and when both
    exceed a few thousand rows the system is solved per target column by LSMR on the sparse design.
    The intercept is the weighted mean of the targets (targets are centred, the design is not, which keeps
    it sparse; with one-hot blocks the difference is absorbed by the block weights).
    Returns ``(intercept (m,), coef (p x m))``.
    """
    design = sp.csr_matrix(design, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    squeeze = y.ndim == 1
    y = y[:, None] if squeeze else y
    n, p = design.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    intercept = (w @ y) / w.sum() if n and w.sum() > 0 else np.zeros(y.shape[1])
    sw = np.sqrt(w)
    xw = sp.diags(sw) @ design
    yw = (y - intercept) * sw[:, None]
    if n == 0 or p == 0:
        coef = np.zeros((p, y.shape[1]))
    elif p <= n and p <= _DENSE_GRAM_MAX:
        gram = (xw.T @ xw).toarray()
        gram[np.diag_indices(p)] += reg
        coef = np.linalg.solve(gram, np.asarray(xw.T @ yw))
    elif n <= _DENSE_GRAM_MAX:
        gram = (xw @ xw.T).toarray()
        gram[np.diag_indices(n)] += reg
        coef = np.asarray(xw.T @ np.linalg.solve(gram, yw))
    else:
        coef = np.column_stack([lsmr(xw, yw[:, j], damp=np.sqrt(reg), atol=1e-8, btol=1e-8)[0] for j in range(yw.shape[1])])
    if squeeze:
        return float(intercept[0]), coef[:, 0]
    return intercept, coef
