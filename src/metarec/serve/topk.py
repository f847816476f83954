"""The top-k of the whole catalogue for adapted users: exact, or approximate through a faiss HNSW index.

Exact (:class:`ExactTopK`, the default) scores every item - for a model linear in the item vector
(NeuralCF) one matrix product of the users' weights with the item matrix - leaves the excluded items
out and selects the best (:func:`top_of_row`). At 100k-1M items the product and the selection are most
of a request's time.

Approximate (:class:`ApproximateTopK`, ``top_k="approximate"``): NeuralCF scores ``q_v . w + b_v + c``,
which is the inner product of ``[q_v, b_v]`` with ``[w, 1]`` plus a constant per user that does not change
the order (nor does centring the item vectors, which the index needs: :meth:`ApproximateTopK._transform`),
so an inner-product HNSW index over the augmented item vectors finds a user's best items
without scoring all of them. It is built once per catalogue (seeded), asked for ``k + |excluded|``
neighbours (widened when filtering leaves fewer than ``k``), and the found items are rescored with the
model's exact score: only recall is approximate (:func:`approximate_recall` measures it). Other models
have no such vector and rank exactly, with the reason logged. Items added or refolded while serving are
scored exactly beside the index until they are too many (then it is rebuilt), so ``add_item`` does not
rebuild a million-item graph. An implicit model that re-orders its new items by attribute similarity
(:mod:`metarec.models.new_item_order`) has every new item scored exactly and re-ordered beside the index.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from metarec.errors import ConfigError, require_extra
from metarec.models.new_item_order import NewItemOrder
from metarec.serve.hnsw import HNSWConfig

log = logging.getLogger(__name__)

TOP_K_MODES = ("exact", "approximate")
Ranked = tuple[np.ndarray, np.ndarray]  # (catalogue indices [k] int64, scores [k] float32), best first
NO_ITEMS: Ranked = (np.zeros(0, np.int64), np.zeros(0, np.float32))


class ScoredUsers(Protocol):
    """What a top-k needs of a batch of adapted users (``AdaptedUser(s)`` of the personalizer, or
    :class:`LinearUsers` over a catalogue of item vectors)."""

    def catalogue_score_tensor(self) -> torch.Tensor:  # [B, N] scores of every item
        ...

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:  # (w [B, F], c [B]) of a linear model
        ...

    def new_item_order(self) -> "tuple[NewItemOrder, np.ndarray, np.ndarray] | None":
        """(order, support ptr, support items) when new items are re-ordered after scoring (an implicit
        model's :mod:`~metarec.models.new_item_order`): the approximate top-k applies it too."""
        ...


def check_top_k(mode: str) -> str:
    """``mode`` checked before anything loads: a wrong name is a :class:`ConfigError`, ``approximate``
    without faiss the one-line error naming the ``ann`` extra."""
    if mode not in TOP_K_MODES:
        raise ConfigError(f"top_k must be one of {', '.join(TOP_K_MODES)}, got {mode!r}")
    if mode == "approximate":
        require_extra("faiss", "ann", "approximate top-k (top_k='approximate')")
    return mode


@dataclass(frozen=True)
class LinearCatalogue:
    """Items of a model linear in the item vector: ``vectors`` [N, F + 1] (``q_v`` then ``b_v``), scored
    ``q_v . w + b_v + c`` as ``NeuralCF.score_with_weights`` does, clamped to ``scale`` (None: implicit
    feedback's ranking scores, unclamped)."""

    vectors: torch.Tensor
    scale: tuple[float, float] | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def scores(self, w: torch.Tensor, c: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """[B, N] scores of every item (or [B, len(rows)] of ``rows``)."""
        vec = self.vectors if rows is None else self.vectors.index_select(0, torch.as_tensor(rows, device=self.vectors.device))
        f = vec.shape[1] - 1
        out = torch.addmm(vec[:, f].unsqueeze(0) + c.unsqueeze(-1), w, vec[:, :f].t())
        return out if self.scale is None else out.clamp(*self.scale)


@dataclass(frozen=True)
class MemberMeanCatalogue:
    """An ensemble of linear models' items: the members' mean score (each clamped first, as the exact top-k
    scores it), users' weights side by side (``w`` [B, F_1 + ... + F_M], ``c`` [B, M]). ``vectors`` =
    ``[q^1_v, ..., q^M_v, b^1_v + ... + b^M_v]``: with ``[w, 1]``, M times the unclamped mean less a
    constant per user, so the same order for the index (clamping aside; found items are rescored)."""

    members: tuple[LinearCatalogue, ...]

    def __post_init__(self) -> None:
        if not self.members or len({len(m) for m in self.members}) != 1:
            raise ValueError("an ensemble's catalogues must hold the same items, and at least one")

    def __len__(self) -> int:
        return len(self.members[0])

    @cached_property
    def vectors(self) -> torch.Tensor:
        factors = [m.vectors[:, :-1] for m in self.members]
        return torch.cat([*factors, sum(m.vectors[:, -1:] for m in self.members)], dim=1)

    def scores(self, w: torch.Tensor, c: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """[B, N] the members' mean score of every item (or [B, len(rows)] of ``rows``)."""
        parts = torch.split(w, [m.vectors.shape[1] - 1 for m in self.members], dim=1)
        return torch.stack([m.scores(part, c[:, i], rows) for i, (m, part) in enumerate(zip(self.members, parts))]).mean(0)


@dataclass
class LinearUsers:
    """Users given by their weights ``(w [B, F], c [B])`` over a :class:`LinearCatalogue` (benchmarks, tests)."""

    catalogue: LinearCatalogue
    w: torch.Tensor
    c: torch.Tensor

    def catalogue_score_tensor(self) -> torch.Tensor:
        return self.catalogue.scores(self.w, self.c)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w, self.c

    def new_item_order(self) -> None:
        return None


def _excluded(excluded: np.ndarray | None) -> np.ndarray:
    return np.zeros(0, np.int64) if excluded is None or not len(excluded) else np.unique(np.asarray(excluded, np.int64))


def top_of_row(row: torch.Tensor, k: int, excluded: np.ndarray | None = None) -> Ranked:
    """The ``k`` best of one score row, ``excluded`` left out, best first, equal scores in catalogue order.

    Selected by ``np.argpartition`` over the items left, as the service always has (as fast as
    ``torch.topk`` at 1M items: ~5 ms): which members of a group of equal scores at the k-th place make
    the list is then the partition's choice, where ``torch.topk`` would always keep the first in catalogue
    order and give every user whose best items tie (items with the same attributes) the same list."""
    scores = row.detach().cpu().numpy()
    drop = _excluded(excluded)
    pool = np.arange(len(scores))
    if len(drop):
        keep = np.ones(len(scores), dtype=bool)
        keep[drop] = False
        pool, scores = pool[keep], scores[keep]
    k = min(int(k), len(pool))
    if k <= 0:
        return NO_ITEMS
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.lexsort((pool[top], -scores[top]))]
    return pool[top].astype(np.int64), scores[top].astype(np.float32)


class ExactTopK:
    """Every item scored (for NeuralCF one matrix product), excluded items left out, the best selected."""

    mode = "exact"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason  # why an approximate top-k was asked for and not given

    def search(self, users: ScoredUsers, ks: Sequence[int], excluded: Sequence[np.ndarray | None]) -> list[Ranked]:
        """Per user, the ``ks[b]`` best items outside ``excluded[b]`` (catalogue indices, scores)."""
        scores = users.catalogue_score_tensor()
        return [top_of_row(scores[b], k, excl) for b, (k, excl) in enumerate(zip(ks, excluded))]

    def describe(self) -> dict[str, Any]:
        return {"mode": "exact"} if self.reason is None else {"mode": "exact", "requested": "approximate",
                                                             "reason": self.reason}


class ApproximateTopK:
    """An inner-product HNSW index over ``[q_v, b_v]`` queried with ``[w, 1]``, found items rescored
    exactly (see the module docstring). ``previous``: the index of the catalogue this one grew from, kept
    when few items differ."""

    mode = "approximate"

    def __init__(self, catalogue: "LinearCatalogue | MemberMeanCatalogue", config: HNSWConfig | None = None,
                 previous: "ApproximateTopK | None" = None) -> None:
        self.faiss = require_extra("faiss", "ann", "approximate top-k (top_k='approximate')")
        self.catalogue, self.config = catalogue, config or HNSWConfig()
        stale = None if previous is None or previous.config != self.config else previous._stale_rows(catalogue)
        limit = max(256, int(self.config.max_stale * len(catalogue)))
        if previous is not None and stale is not None and len(stale) <= limit:
            self.index, self.stale, self.n_indexed, self._shift = previous.index, stale, previous.n_indexed, previous._shift
            self.build_seconds, self.recall_estimate = previous.build_seconds, previous.recall_estimate
            if len(stale):
                log.info("approximate top-k: %d changed or new item(s) scored beside the index", len(stale))
        else:
            self.index, self.stale = self._build(), np.zeros(0, np.int64)
            self.n_indexed = int(self.index.ntotal)
            self.recall_estimate = self._estimate_recall()

    def _build(self) -> Any:
        faiss, cfg = self.faiss, self.config
        data = self.catalogue.vectors.detach().double().cpu().numpy()
        self._shift = data.mean(0) if len(data) else np.zeros(data.shape[1])
        data = self._transform(data)
        if cfg.metric == "l2":  # |[w, 1, 0] - [x, r]|^2 = |[w, 1]|^2 + R^2 - 2 [w, 1].x: the nearest is the best
            norms = np.linalg.norm(data, axis=1)
            radius = float(norms.max()) if len(norms) else 0.0
            data = np.hstack([data, np.sqrt(np.maximum(radius ** 2 - norms ** 2, 0.0))[:, None]])
        data = np.ascontiguousarray(data, dtype=np.float32)
        metric = faiss.METRIC_L2 if cfg.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        index = faiss.IndexHNSWFlat(data.shape[1], cfg.m, metric)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        index.hnsw.rng = faiss.RandomGenerator(cfg.seed)
        threads = faiss.omp_get_max_threads()  # restored after: searches stay as they were
        start = time.perf_counter()
        try:  # explicitly: torch.set_num_threads(1) (the service's) can leave OpenMP, and faiss, at one
            faiss.omp_set_num_threads(cfg.build_threads or os.cpu_count() or 1)
            index.add(data)
        finally:
            faiss.omp_set_num_threads(threads)
        self.build_seconds = time.perf_counter() - start
        log.info("approximate top-k: HNSW index (%s) of %d items (M=%d, efConstruction=%d) built in %.1f s",
                 cfg.metric, len(data), cfg.m, cfg.ef_construction, self.build_seconds)
        return index

    def _transform(self, vectors: np.ndarray) -> np.ndarray:
        """Item vectors centred on the catalogue's mean: ``[w, 1] . mean`` is one more constant per user, so
        the order is the same, and an inner-product graph over vectors far from the origin links nearly
        every item to the few with the largest ``mean . x`` (recall@10 0.18 -> 1.00 on 5,000 such items)."""
        return vectors - self._shift

    def _queries(self, w: torch.Tensor) -> np.ndarray:
        """``[w, 1]`` (``[w, 1, 0]`` for the l2 graph) of users' weights ``w`` [B, F]."""
        tail = [np.ones((len(w), 1))] + ([np.zeros((len(w), 1))] if self.config.metric == "l2" else [])
        return np.ascontiguousarray(np.hstack([w.detach().float().cpu().numpy(), *tail]), dtype=np.float32)

    def _estimate_recall(self, k: int = 10, chunk: int = 16) -> float | None:
        """Recall@``k`` of the bare index (unclamped scores) for users whose weights are random items' own
        ``q_v`` - users who like items like v: a check that the graph suits this catalogue, logged (a
        warning below 0.9) and shown by :meth:`describe`. ~1 s for 1M items."""
        n = min(self.config.check_queries, self.n_indexed)
        if n <= 0 or k > self.n_indexed:
            return None
        rows = np.sort(np.random.default_rng(self.config.seed).choice(self.n_indexed, n, replace=False))
        vectors = self.catalogue.vectors.detach()
        raw = LinearCatalogue(vectors)
        params = self.faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
        hits = []
        for lo in range(0, n, chunk):
            w = vectors[torch.as_tensor(rows[lo:lo + chunk], device=vectors.device), :-1]
            scores = raw.scores(w, torch.zeros(len(w), dtype=w.dtype, device=w.device))
            kth = torch.topk(scores, k, dim=1).values[:, -1:].cpu().numpy()
            _, found = self.index.search(self._queries(w), k, params=params)
            got = np.take_along_axis(scores.cpu().numpy(), np.maximum(found, 0), axis=1)
            hits.append((found >= 0) & (got >= kth - 1e-6 * np.maximum(1.0, np.abs(kth))))
        recall = float(np.concatenate(hits).mean())
        (log.warning if recall < 0.9 else log.info)(
            "approximate top-k: recall@%d about %.3f on %d item-like users%s", k, recall, n,
            "; a larger ef_search or m, or metric l2, may suit this catalogue better" if recall < 0.9 else "")
        return recall

    def _stale_rows(self, catalogue: "LinearCatalogue | MemberMeanCatalogue") -> np.ndarray | None:
        """Rows of ``catalogue`` this index does not hold as they are now (changed vectors, new items);
        None for another model's catalogue (another width, or fewer items)."""
        n, width = int(self.index.ntotal), catalogue.vectors.shape[1]
        if width + (self.config.metric == "l2") != self.index.d or len(catalogue) < n:
            return None
        held = self.index.reconstruct_n(0, n)[:, :width]
        now = self._transform(catalogue.vectors[:n].detach().double().cpu().numpy()).astype(np.float32)
        # a grown catalogue's item tower may round differently in the last bits: only real changes count
        changed = np.flatnonzero((~np.isclose(held, now, rtol=1e-5, atol=1e-6)).any(axis=1))
        return np.concatenate([self.stale[self.stale < n], changed, np.arange(n, len(catalogue))]).astype(np.int64)

    @property
    def memory_bytes(self) -> int:
        """The index's size: its copy of the vectors and the graph (neighbour lists, offsets, levels)."""
        hnsw = self.index.hnsw
        return (self.n_indexed * self.index.d * 4 + hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8
                + hnsw.levels.size() * 4)

    def search(self, users: ScoredUsers, ks: Sequence[int], excluded: Sequence[np.ndarray | None]) -> list[Ranked]:
        """As :meth:`ExactTopK.search`, from the index's neighbours of each user's ``[w, 1]``."""
        w, c = users.weights()
        w, c = w.detach(), c.detach()
        queries = self._queries(w)
        placed = self._placed_new_items(users, w, c)
        return [self._one(queries[b:b + 1], w[b:b + 1], c[b:b + 1], int(k), _excluded(excl),
                          None if placed is None else (placed[0], placed[1][b]))
                for b, (k, excl) in enumerate(zip(ks, excluded))]

    def _placed_new_items(self, users: ScoredUsers, w: torch.Tensor, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """(new items, [B, n_new] their scores in the users' order) when ``users`` re-order new items: every
        new item is scored exactly and re-ordered as the exact top-k does, the index serving the known
        items. The re-order only permutes the new items' own scores, so an item outside the index's best
        ``k + |excluded|`` still cannot enter the top k."""
        ordering = users.new_item_order()
        if ordering is None:
            return None
        order, ptr, items = ordering
        if len(order.new_items) != len(self.catalogue):
            raise ValueError(f"the new-item order covers {len(order.new_items)} items, the catalogue {len(self.catalogue)}")
        new = order.new_columns
        return new, order.order_new_scores(self.catalogue.scores(w, c, new).cpu().numpy(), ptr, items)

    def _one(self, query: np.ndarray, w: torch.Tensor, c: torch.Tensor, k: int, drop: np.ndarray,
             placed: tuple[np.ndarray, np.ndarray] | None = None) -> Ranked:
        k = min(k, len(self.catalogue) - len(drop))
        if k <= 0:
            return NO_ITEMS
        extra, unwanted = self.stale, drop
        if len(self.stale):  # scored exactly, beside the index
            extra, unwanted = self.stale[~np.isin(self.stale, drop)], np.union1d(drop, self.stale)
        ask = min(k + int(np.count_nonzero(unwanted < self.n_indexed)), self.n_indexed)
        fixed_rows, fixed_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if placed is not None:  # new items: their re-ordered scores, not the index's
            keep = ~np.isin(placed[0], drop)
            fixed_rows, fixed_scores = placed[0][keep], placed[1][keep]
            extra, unwanted = extra[~np.isin(extra, placed[0])], np.union1d(unwanted, placed[0])
        while True:
            params = self.faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, ask))
            _, found = self.index.search(query, ask, params=params)
            hits = found[0][found[0] >= 0]
            exhausted = len(hits) < ask  # the graph reached no more items: widening would not help
            if len(unwanted):
                hits = hits[~np.isin(hits, unwanted, assume_unique=True)]
            if len(hits) + len(extra) + len(fixed_rows) >= k or ask >= self.n_indexed or exhausted:
                break
            ask = min(2 * ask, self.n_indexed)  # too many of the neighbours were excluded: widen
            log.debug("approximate top-k: widening to %d neighbours", ask)
        if len(hits) + len(extra) + len(fixed_rows) < k:  # the graph reached too few items: rank this user exactly
            log.debug("approximate top-k: %d of %d items found, ranking exactly", len(hits) + len(extra), k)
            row = self.catalogue.scores(w, c)[0]
            if placed is not None:
                row[torch.as_tensor(placed[0], device=row.device)] = torch.as_tensor(placed[1], dtype=row.dtype, device=row.device)
            return top_of_row(row, k, drop)
        rows = np.concatenate([hits.astype(np.int64), extra])
        scores = np.concatenate([self.catalogue.scores(w, c, rows)[0].cpu().numpy(), fixed_scores])
        rows = np.concatenate([rows, fixed_rows])
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order].astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"mode": "approximate", "index": "faiss HNSW", **asdict(self.config),
                "items_indexed": self.n_indexed, "items_scored_beside": int(len(self.stale)),
                "recall_at_10_estimate": None if self.recall_estimate is None else round(self.recall_estimate, 4),
                "build_seconds": round(self.build_seconds, 3), "memory_bytes": int(self.memory_bytes)}


def make_top_k(mode: str, learner: Any, catalogue_vec: torch.Tensor | None, config: HNSWConfig | None = None,
               previous: "ExactTopK | ApproximateTopK | None" = None,
               members: Sequence[tuple[Any, torch.Tensor | None]] = ()) -> "ExactTopK | ApproximateTopK":
    """The top-k a personalizer of ``learner`` (and an ensemble's other ``members``' ``(learner, catalogue_vec)``:
    :class:`MemberMeanCatalogue`) uses; ``approximate`` without item vectors shared by all users falls back
    to exact and logs why."""
    if check_top_k(mode) == "exact":
        return ExactTopK()
    catalogues = []
    for one, vec in [(learner, catalogue_vec), *members]:
        reason = _not_linear(one, vec)
        if reason is not None:
            log.warning("approximate top-k asked for, ranking exactly: %s", reason)
            return ExactTopK(reason)
        scale = None if one.model.implicit else tuple(float(v) for v in one.model.rating_scale)
        catalogues.append(LinearCatalogue(vec, scale))  # type: ignore[arg-type]
    catalogue = catalogues[0] if len(catalogues) == 1 else MemberMeanCatalogue(tuple(catalogues))
    return ApproximateTopK(catalogue, config, previous if isinstance(previous, ApproximateTopK) else None)


def _not_linear(learner: Any, catalogue_vec: torch.Tensor | None) -> str | None:
    """Why ``learner``'s scores are not one inner product with a shared item vector (None: they are)."""
    if not getattr(learner.model, "linear_in_item", False):
        return f"this {type(learner.model).__name__} model is not linear in an item vector (train the neural-cf preset)"
    if catalogue_vec is None or learner.batched:
        return f"this {type(learner.model).__name__} model adapts its item side per user: no item vector is shared by all users"
    return None


def approximate_recall(exact: Any, approx: Any, users: Sequence[ScoredUsers], k: int = 10,
                       excluded: Sequence[np.ndarray | None] | None = None) -> float:
    """Mean recall@``k`` of ``approx``'s lists against ``exact``'s over ``users`` (one user each). An item
    tied with the exact list's last score counts as found: either list is then a correct top-k."""
    recalls = []
    for i, user in enumerate(users):
        excl = [None if excluded is None else excluded[i]]
        (want, want_scores), = exact.search(user, [k], excl)
        (got, got_scores), = approx.search(user, [k], excl)
        if not len(want):
            continue
        kth = float(want_scores[-1])
        tie = got_scores >= kth - 1e-6 * max(1.0, abs(kth))
        recalls.append(np.count_nonzero(np.isin(got, want) | tie) / len(want))
    return float(np.mean(recalls)) if recalls else float("nan")
