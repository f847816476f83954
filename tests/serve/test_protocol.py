"""The service's HTTP: a header too large is refused, a request that arrives too slowly is cut off, and
a normal request on a kept-alive connection is not (a real uvicorn server on loopback, a tiny app)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI

from metarec.serve.protocol import MAX_HEADER_BYTES, BoundedH11Protocol, server_options

HOST = "127.0.0.1"


class QuickTimeout(BoundedH11Protocol):
    read_timeout = 1.0


@pytest.fixture(scope="module")
def port():
    app = FastAPI()

    @app.get("/slow")
    def slow() -> dict:
        time.sleep(1.5)  # longer than the read timeout: answering is not reading
        return {"ok": True}

    @app.get("/ok")
    def ok() -> dict:
        return {"ok": True}

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free = probe.getsockname()[1]
    config = uvicorn.Config(app, host=HOST, port=free, log_level="warning", **{**server_options(), "http": QuickTimeout})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield free
    server.should_exit = True
    thread.join(timeout=10)


def _exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    with socket.create_connection((HOST, port), timeout=wait) as conn:
        conn.sendall(data)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def test_a_header_larger_than_the_limit_is_refused(port):
    started = time.monotonic()
    answer = _exchange(port, b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * MAX_HEADER_BYTES) + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and time.monotonic() - started < 3


def test_a_half_sent_request_is_cut_off(port):
    with socket.create_connection((HOST, port), timeout=10) as conn:
        conn.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert conn.recv(1024) == b""  # the server closed the connection
        assert 0.5 < time.monotonic() - started < 5


def test_a_slow_answer_and_a_kept_alive_connection_are_fine(port):
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for path in ("/slow", "/ok", "/ok"):  # one connection, kept alive
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b'{"ok":true}'
        assert conn.sock is not None  # never reconnected
    finally:
        conn.close()
