"""`metarec serve --workers 2`: the real processes, each with its own SO_REUSEPORT socket, on loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metarec.errors import MetarecError
from metarec.serve.workers import check_port_free, listening_socket, reuse_port_supported

pytestmark = pytest.mark.skipif(not reuse_port_supported(), reason="needs SO_REUSEPORT (Linux)")
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _post(port: int, body: dict, key: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("POST", "/v1/recommend", body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                          "X-API-Key": key})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def _children(pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return found


def test_taken_port_is_one_clear_error():
    with listening_socket(HOST, 0) as held:
        port = held.getsockname()[1]
        with pytest.raises(MetarecError, match=f"cannot listen on {HOST}:{port}"):
            check_port_free(HOST, port)


def test_two_workers_serve_and_stop_cleanly(saved_dir: Path, popular_ids: list[str], tmp_path: Path):
    port, key = _free_port(), "k" * 24
    env = {**os.environ, "METAREC_API_KEY": key}
    log = tmp_path / "server.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "metarec.cli", "serve", str(saved_dir), "--host", HOST,
                                 "--port", str(port), "--workers", "2", "--no-access-log"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # both workers up: each answers /healthz on its own socket
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server not up in 120 s:\n" + log.read_text()
            if os.path.exists(f"/proc/{proc.pid}") and len(_children(proc.pid)) >= 2 and \
                    log.read_text().count("Application startup complete") >= 2:
                break
            time.sleep(0.3)
        workers = _children(proc.pid)
        assert len(workers) >= 2
        ratings = [{"item_id": i, "rating": 5} for i in popular_ids[:3]]
        answers = [_post(port, {"ratings": ratings, "k": 5}, key) for _ in range(12)]  # a new connection each
        assert all(status == 200 for status, _ in answers)
        assert all(len(body["items"]) == 5 for _, body in answers)
        first = [x["item_id"] for x in answers[0][1]["items"]]
        assert all([x["item_id"] for x in body["items"]] == first for _, body in answers)  # same model everywhere
        assert _post(port, {"ratings": ratings}, "wrong-key")[0] == 401
        # a worker killed (out of memory, say) is replaced; meanwhile the other one answers (a connection
        # the kernel had already queued on the dead worker's socket is reset)
        os.kill(workers[0], signal.SIGKILL)
        deadline, answered = time.monotonic() + 120, 0
        while log.read_text().count("Application startup complete") < 3:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no replacement worker in 120 s:\n" + log.read_text()
            try:
                answered += _post(port, {"ratings": ratings, "k": 5}, key)[0] == 200
            except ConnectionError:
                pass
            time.sleep(0.3)
        assert answered > 0
        assert "starting a replacement" in log.read_text()
        replaced = _children(proc.pid)
        assert workers[0] not in replaced and len(replaced) >= 2
        assert all(_post(port, {"ratings": ratings, "k": 5}, key)[0] == 200 for _ in range(8))
        workers = replaced
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    assert not any(os.path.exists(f"/proc/{w}") and "metarec" in Path(f"/proc/{w}/cmdline").read_text()
                   for w in workers), "a worker outlived the server"


def _wait_for(log: Path, text: str, count: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while log.read_text().count(text) < count:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {count} x {text!r} in {seconds:g} s:\n" + log.read_text()
        time.sleep(0.2)


def test_ctrl_c_stops_two_workers_without_a_traceback(saved_dir: Path, tmp_path: Path):
    """Ctrl-C in a terminal sends SIGINT to the whole process group: server, workers, and a worker that is
    still starting. Every one of them stops quietly (uvicorn raises the signal again once it has shut
    down; a worker left with Python's default handler died of a KeyboardInterrupt traceback)."""
    port, log = _free_port(), tmp_path / "server.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "metarec.cli", "serve", str(saved_dir), "--host", HOST,
                                 "--port", str(port), "--workers", "2", "--no-access-log"],
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(log, "Application startup complete", 2, proc)
        os.kill(_children(proc.pid)[0], signal.SIGINT)  # one worker alone: it stops quietly and is replaced
        _wait_for(log, "starting a replacement", 1, proc)
        os.killpg(proc.pid, signal.SIGINT)  # then the terminal's Ctrl-C, the replacement still starting
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    text = log.read_text()
    assert code in (0, 130), text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
