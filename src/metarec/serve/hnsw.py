"""The approximate top-k's HNSW index settings (:class:`metarec.serve.topk.ApproximateTopK`): one frozen
config, parsed from the CLI's ``--hnsw name=value`` and the service's settings."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

from metarec.errors import ConfigError


@dataclass(frozen=True)
class HNSWConfig:
    """The index's parameters. Larger ``m`` / ``ef_construction``: a better graph, a slower build; larger
    ``ef_search``: higher recall, slower queries (raised to the number of neighbours asked for). ``seed``
    draws the nodes' levels; ``build_threads`` = 1 makes the graph identical between builds (None: every
    CPU). Defaults: recall@10 about 0.99 on 100k random 33-wide vectors (docs/performance.md).

    ``metric``: an inner-product graph (``ip``) is the better one for a top-10 over spread-out vectors, but
    its pruning leaves items far inside the catalogue's convex hull with no way in, which costs recall
    at larger ``k`` on clustered (trained) vectors; ``l2`` indexes the equivalent nearest-neighbour
    problem (``[x, sqrt(R^2 - |x|^2)]`` against ``[w, 1, 0]``, Bachrach et al. 2014): a connected metric
    graph, at lower recall on spread-out vectors."""

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    seed: int = 12345
    build_threads: int | None = None
    max_stale: float = 0.01  # rebuild once items scored beside the index exceed this share (and 256)
    metric: str = "ip"  # or "l2" (see above)
    check_queries: int = 100  # users (items' own vectors) of the recall@10 estimate made after a build; 0: none

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> "HNSWConfig":
        """From ``{name: value}`` (the CLI's ``--hnsw m=16``); :class:`ConfigError` for an unknown name or value."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown HNSW setting(s) {unknown}: use {', '.join(known)}")
        kinds = {"max_stale": float, "metric": str}
        try:
            out = cls(**{k: None if k == "build_threads" and v is None else kinds.get(k, int)(v)  # type: ignore[operator]
                         for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"HNSW settings other than metric must be numbers: {exc}") from None
        if min(out.m, out.ef_construction, out.ef_search, out.build_threads or 1) < 1 or out.metric not in ("ip", "l2"):
            raise ConfigError(f"HNSW m, ef_construction, ef_search and build_threads must be >= 1 and metric "
                              f"ip or l2: {dict(values)}")
        return out
