"""Micro-batching for the HTTP service: concurrent ``/v1/recommend`` requests adapted together.

Why: one new user costs ~1.6 ms of model time, most of it per-call overhead (a few hundred small
torch ops); adapting a handful of users in one padded batch costs little more than one. And one
inference thread means no module replicas, no thread pool hop per request, and no threads fighting
for the GIL and the cores.

How: the event loop puts each request (with a future) on a queue and awaits the future. One worker
thread takes whatever is queued - at least one request, at most ``max_pending`` - optionally waiting
``max_wait`` seconds for more, runs :meth:`ColdStartRecommender.recommend_many` on them, and resolves
the futures in the event loop. Under load the queue fills while a batch runs, so batches form without
any added wait; an idle service answers a lone request at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any, Callable

from metarec.errors import MetarecError
from metarec.serve.recommender import ColdStartRecommender, RecommendQuery, Recommendations

log = logging.getLogger(__name__)

_STOP = object()


class MicroBatcher:
    """One inference thread that answers queued :class:`RecommendQuery` s in vectorised batches.

    ``batch_size``: users per vectorised call (the model's sweet spot; larger groups of a drained
    queue are split). ``max_pending``: requests taken from the queue at once. ``max_wait``: seconds
    to wait for more requests once one is there (0: none). ``on_thread_start`` runs first in the
    worker thread (e.g. to set torch's thread count there).
    """

    def __init__(
        self,
        recommender: ColdStartRecommender,
        *,
        batch_size: int = 4,
        max_pending: int = 64,
        max_wait: float = 0.0,
        on_thread_start: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1 or max_pending < 1 or max_wait < 0:
            raise MetarecError("batch_size and max_pending must be >= 1 and max_wait >= 0")
        self._recommender = recommender
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._max_wait = max_wait
        self._on_thread_start = on_thread_start
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0  # counters for tests and logs; written by the worker thread only
        self.requests = 0
        self.cpu_seconds = 0.0  # the worker thread's CPU time in recommend_many

    def start(self) -> None:
        """Start the inference thread (a no-op when it runs)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="metarec-batcher", daemon=True)
                thread.start()
                self._thread = thread

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
            if self.batches:
                log.info("micro-batcher: %d requests in %d batches (%.1f per batch), %.3f ms model CPU per request",
                         self.requests, self.batches, self.requests / self.batches, 1000 * self.cpu_seconds / self.requests)

    async def recommend(self, query: RecommendQuery) -> Recommendations:
        """The query's answer; raises the query's own :class:`MetarecError` (bad input)."""
        if self._thread is None:
            raise MetarecError("the micro-batcher is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recommendations | MetarecError] = loop.create_future()
        self._queue.put((query, future, loop))
        result = await future
        if isinstance(result, MetarecError):
            raise result
        return result

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        if self._on_thread_start is not None:
            self._on_thread_start()
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            pending = [first]
            stop = self._drain(pending)
            self._answer(pending)
            if stop:
                return

    def _drain(self, pending: list) -> bool:
        """Add what else is queued (waiting up to ``max_wait`` for it); True when told to stop."""
        deadline = time.monotonic() + self._max_wait
        while len(pending) < self._max_pending:
            try:
                timeout = deadline - time.monotonic()
                entry = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if entry is _STOP:
                return True
            pending.append(entry)
        return False

    def _answer(self, pending: list) -> None:
        queries = [query for query, _, _ in pending]
        cpu = time.thread_time()
        try:
            results: list[Any] = self._recommender.recommend_many(queries, batch_size=self._batch_size)
        except Exception as exc:  # a bug, not bad input: every waiting request gets it (a 500), the thread lives on
            log.exception("batch of %d recommendations failed", len(pending))
            results = [exc] * len(pending)
        self.cpu_seconds += time.thread_time() - cpu
        self.batches += 1
        self.requests += len(pending)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
        for (_, future, loop), result in zip(pending, results):
            by_loop.setdefault(loop, []).append((future, result))
        for loop, answers in by_loop.items():  # one wake-up of each event loop per batch
            try:
                loop.call_soon_threadsafe(_resolve, answers)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass


def _resolve(answers: list[tuple[asyncio.Future, Any]]) -> None:
    for future, result in answers:
        if future.done():  # the client went away and the request was cancelled
            continue
        if isinstance(result, BaseException) and not isinstance(result, MetarecError):
            future.set_exception(result)
        else:
            future.set_result(result)
