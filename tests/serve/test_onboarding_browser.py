"""The onboarding page in headless Chromium against a real ``metarec serve`` on loopback: no key (a clear
401 message), the key typed in, one round marked and rated, the next round, the top 10; screenshots.

Skipped when no Chromium is installed (``apt-get install chromium``). The screenshots go to the test's
tmp folder, and also to ``$METAREC_SCREENSHOTS`` when set; ``$METAREC_SCREENSHOT_RUN`` serves a trained run
instead of the tests' 2-epoch model (the README's pictures)::

    metarec train --dataset ml-100k --preset ml100k --no-search --epochs 8 --out runs/ml100k
    METAREC_SCREENSHOTS=docs/img METAREC_SCREENSHOT_RUN=runs/ml100k pytest tests/serve/test_onboarding_browser.py
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from chromium_pipe import Browser, find_chromium

CHROMIUM = find_chromium()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")]
HOST = "127.0.0.1"
KEY = "browser-test-key-6c1d"
WIDTH = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-API-Key": KEY})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@contextlib.contextmanager
def serving(run: str | Path, tmp_path: Path, env: dict[str, str]) -> Iterator[int]:
    """``metarec serve RUN`` in its own process on a free loopback port until the block ends (its output in
    ``tmp_path / "server.log"``); the port, once /healthz answers."""
    port = _free_port()
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "metarec.cli", "serve", str(run), "--host", HOST,
                                 "--port", str(port), "--no-access-log"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if _get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start within 120 s"
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture()
def server(saved_dir: Path, tmp_path: Path):
    """``metarec serve`` in its own process on a free loopback port, with an API key; killed afterwards."""
    run = os.environ.get("METAREC_SCREENSHOT_RUN") or str(saved_dir)
    with serving(run, tmp_path, {**os.environ, "METAREC_API_KEY": KEY}) as port:
        yield port


@pytest.fixture()
def browser(tmp_path: Path):
    b = Browser(CHROMIUM, tmp_path / "profile", width=WIDTH, height=900, timeout=30)
    try:
        yield b
    finally:
        b.close()


def _save(browser: Browser, tmp_path: Path, name: str, max_height: int = 2400) -> None:
    png = browser.screenshot(tmp_path / name, WIDTH, max_height)
    assert png.startswith(b"\x89PNG") and len(png) < 200_000, len(png)
    if os.environ.get("METAREC_SCREENSHOTS"):
        (Path(os.environ["METAREC_SCREENSHOTS"]) / name).write_bytes(png)


def _item_ids(browser: Browser, selector: str) -> list[str]:
    return browser.js(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.dataset.itemId)")


@pytest.mark.timeout(300)
def test_onboarding_page_in_chromium(server: int, browser: Browser, tmp_path: Path):
    origin = f"http://{HOST}:{server}"
    browser.goto(f"{origin}/")  # redirected to /onboarding
    message = browser.wait_for("document.getElementById('message').textContent", "the no-key message")
    assert "API key" in message and "X-API-Key" in message, message
    assert browser.js("location.pathname") == "/onboarding"

    browser.type("#key", KEY)
    browser.click("#start")
    browser.wait_for("document.querySelectorAll('#items li.item').length === 10", "the first round")
    first = _item_ids(browser, "#items li.item")
    status, expected = _get(server, "/v1/onboarding?n=10")
    assert status == 200 and first == [i["item_id"] for i in expected["items"]]
    text = browser.js("document.body.innerText")
    assert all(i["title"] in text for i in expected["items"])
    assert browser.js("document.getElementById('message').textContent") == ""

    for row, stars in ((0, 5), (2, 4), (5, 2)):
        browser.click(f"#items li.item:nth-child({row + 1}) button.star:nth-child({stars})")
    browser.click("#items li.item:nth-child(8) input.known")  # seen it, not rated
    assert browser.js("document.querySelectorAll('#items li.item.known').length") == 4
    assert browser.js("document.querySelectorAll('#items li.item:nth-child(3) button.star.on').length") == 4
    assert "4 seen, 3 rated" in browser.js("document.getElementById('summary').textContent")
    _save(browser, tmp_path, "onboarding.png")

    browser.click("#next")
    browser.wait_for("document.getElementById('round').textContent.startsWith('Round 2')", "the second round")
    second = _item_ids(browser, "#items li.item")
    assert len(second) == 10 and not set(second) & set(first)
    browser.click("#items li.item:nth-child(2) button.star:nth-child(5)")

    browser.click("#recommend")
    browser.wait_for("document.querySelectorAll('#recs li').length === 10", "the recommendations")
    recommended = _item_ids(browser, "#recs li")
    assert not set(recommended) & {first[0], first[2], first[5], second[1]}
    scores = browser.js("[...document.querySelectorAll('#recs .score')].map(e => Number(e.textContent))")
    assert scores == sorted(scores, reverse=True)
    assert all(browser.js("[...document.querySelectorAll('#recs .title')].map(e => e.textContent)"))
    assert browser.js("document.getElementById('message').textContent") == ""
    _save(browser, tmp_path, "onboarding-recommendations.png", 1000)  # the top 10

    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(u.startswith(origin + "/") for u in requests), requests  # nothing from another host
    problems = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")
                    and "401" not in e["params"]["entry"]["text"])]  # the deliberate no-key calls: failed loads
    assert not problems, problems  # no script error, no Content-Security-Policy violation
