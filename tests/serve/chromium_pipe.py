"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

No new dependency: Chromium reads commands from fd 3 and writes answers and events to fd 4, each a JSON
object ended by a NUL byte (what Puppeteer and Playwright use too), so no websocket client is needed. Every
wait has a deadline, and :meth:`Browser.close` always kills the process.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def find_chromium() -> str | None:
    """The first Chromium or Chrome binary on PATH (``$METAREC_CHROMIUM`` first), or None."""
    names = [os.environ.get("METAREC_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome",
             "google-chrome-stable", "chrome"]
    return next((path for name in names if name and (path := shutil.which(name))), None)


class BrowserError(RuntimeError):
    """A DevTools command failed, or a wait ran out of time."""


class Browser:
    """One headless Chromium with one page, reached only through loopback (every other host fails to resolve)."""

    def __init__(self, binary: str, profile: Path, width: int = 1000, height: int = 900, timeout: float = 30) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next_id = 0
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def child_fds() -> None:  # fd 3: commands in, fd 4: answers out (dup2 leaves them inheritable)
            low_in, low_out = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
            os.dup2(low_in, 3)
            os.dup2(low_out, 4)

        args = [binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-sandbox",
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=child_fds,
                                        start_new_session=True)
        os.close(to_chrome)
        os.close(from_chrome)
        threading.Thread(target=self._reader, daemon=True).start()
        try:
            targets = self.send("Target.getTargets")["targetInfos"]
            page = next(t["targetId"] for t in targets if t["type"] == "page")
            self.session = self.send("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                self.send(f"{domain}.enable", session=True)
            self.resize(width, height)
        except Exception:
            self.close()
            raise

    def _reader(self) -> None:
        buffer = b""
        while chunk := os.read(self._read, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                (self._answers.put if "id" in message else self.events.append)(message)
        os.close(self._read)
        self._answers.put({"id": -1, "error": {"message": "chromium closed the pipe"}})

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        """One command; its result (a :class:`BrowserError` for an error or no answer within the timeout)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                answer = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BrowserError(f"no answer to {method} within {self.timeout}s") from None
            if answer["id"] not in (self._next_id, -1):  # a late answer to an earlier command
                continue
            if "error" in answer:
                raise BrowserError(f"{method}: {answer['error'].get('message')}")
            return answer.get("result", {})

    def resize(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=True)

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str) -> Any:
        """Poll ``expression`` until it is truthy; :class:`BrowserError` naming ``what`` after the timeout. An
        expression that throws (the page not loaded yet: its elements do not exist) counts as not yet."""
        deadline = time.monotonic() + self.timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except BrowserError as exc:
                value, last_error = None, f" (last: {exc})"
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"timed out after {self.timeout}s waiting for {what}{last_error}")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of the first element ``selector`` matches."""
        x, y = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                      session=True)

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        self.send("Input.insertText", {"text": text}, session=True)

    def screenshot(self, path: Path, width: int, max_height: int = 2400) -> bytes:
        """A PNG of the whole page (up to ``max_height`` CSS pixels tall), written to ``path``."""
        self.resize(width, 100)  # scrollHeight is at least the viewport's: measure with a short one
        height = min(max_height, int(self.js("document.documentElement.scrollHeight")))
        self.js("window.scrollTo(0, 0)")
        self.resize(width, height)
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self._write_quietly({"id": 0, "method": "Browser.close"})
                self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):  # its renderers: the group we started
                os.killpg(self.process.pid, signal.SIGKILL)
            os.close(self._write)

    def _write_quietly(self, message: dict[str, Any]) -> None:
        try:
            os.write(self._write, json.dumps(message).encode() + b"\0")
        except OSError:
            pass
