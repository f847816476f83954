"""HTTP/1.1 as the service speaks it: uvicorn's h11 protocol with a bounded header size and a read timeout.

uvicorn's default parser (httptools, when installed) takes any header size: a 128 MB header line was read
whole. h11 refuses an incomplete request larger than ``MAX_HEADER_BYTES`` with a 400. Neither bounds how
long a client may take to send a request, so a slow or half-sent request held its connection forever:
here a request (headers and body) must arrive within ``READ_TIMEOUT_SECONDS`` of the connection opening or
of the previous response, else the connection is closed. The time the app takes to answer is not counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 64 * 1024
READ_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5


class BoundedH11Protocol(H11Protocol):
    """h11 with a per-request read timeout (``read_timeout`` seconds)."""

    read_timeout: float = READ_TIMEOUT_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._request_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is h11.DONE:  # the whole request arrived: the answer's time is not counted
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is not h11.DONE:
            self._arm()  # the next request on this connection gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._request_timer = self.loop.call_later(self.read_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _too_slow(self) -> None:
        self._request_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def server_options() -> dict[str, Any]:
    """The uvicorn settings every metarec server process uses."""
    return {"http": BoundedH11Protocol, "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "timeout_keep_alive": KEEP_ALIVE_SECONDS}
