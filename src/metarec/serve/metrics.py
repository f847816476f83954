"""Prometheus metrics of the HTTP service, in the text exposition format (no client library needed).

Why by hand: the format is a few lines of text, and ``prometheus_client`` would be a dependency for
three metrics. Counted per process: with ``--workers N`` each worker answers a scrape with its own counts
(Prometheus sums them across scrapes of each worker only if each is scraped on its own port; the
``worker`` label, the process id, tells them apart).

* ``metarec_requests_total{method, route, status}``: answered requests (``route`` is the route's
  template, ``/v1/items/{item_id}``, so ids never become labels; ``unmatched`` for a path no route has);
* ``metarec_request_duration_seconds{route}``: a histogram of the time to the last byte of the answer;
* ``metarec_model_info{model_version, dataset}``: 1, the served model as labels.
"""

from __future__ import annotations

import bisect
import os
import time
from typing import Any, Awaitable, Callable, MutableMapping

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, object]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


class Metrics:
    """Request counts and latencies; updated from the event loop only (no lock)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, tuple[list[int], list[float]]] = {}  # route -> (bucket counts, [sum])

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts, total = self.latency.setdefault(route, ([0] * (len(BUCKETS) + 1), [0.0]))
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        total[0] += seconds

    def render(self, info: dict[str, str]) -> str:
        """The exposition text: counters, the histogram (cumulative buckets), the model's info."""
        worker = {"worker": os.getpid()}
        out = ["# HELP metarec_requests_total HTTP requests answered, by route and status.",
               "# TYPE metarec_requests_total counter"]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(f"metarec_requests_total{_labels({'method': method, 'route': route, 'status': status, **worker})} {n}")
        out += ["# HELP metarec_request_duration_seconds Time to answer a request, to its last byte.",
                "# TYPE metarec_request_duration_seconds histogram"]
        for route, (counts, total) in sorted(self.latency.items()):
            running = 0
            for bound, n in zip([*map(repr, BUCKETS), "+Inf"], counts):
                running += n
                out.append(f"metarec_request_duration_seconds_bucket{_labels({'route': route, 'le': bound, **worker})} {running}")
            labels = _labels({"route": route, **worker})
            out += [f"metarec_request_duration_seconds_sum{labels} {total[0]!r}",
                    f"metarec_request_duration_seconds_count{labels} {running}"]
        out += ["# HELP metarec_model_info The served model.", "# TYPE metarec_model_info gauge",
                f"metarec_model_info{_labels({**info, **worker})} 1"]
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Times every HTTP request and counts it by route template and status (ASGI, no per-request objects)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", ""), route, status[0], time.perf_counter() - start)
