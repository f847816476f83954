"""Several server processes on one port, each with its own listening socket (``SO_REUSEPORT``).

uvicorn's own ``workers=N`` shares one listening socket between the processes, and Linux hands a burst
of new connections to whichever process is awake: 16 keep-alive clients that connect at once all land
on one worker (measured: 16 / 0) while the other idles. With one ``SO_REUSEPORT`` socket per process
the kernel spreads connections over the processes by a hash of their addresses, so every core serves.
Each socket also has ``TCP_NODELAY`` (accepted connections inherit it): without it a response written
in two parts waits ~40 ms for the client's delayed ACK.

Each worker builds the app with :func:`metarec.serve.app.app_from_env`: the model folder, API key and
options travel in the environment (set by the caller), never on a command line.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from types import FrameType

from metarec.errors import MetarecError

log = logging.getLogger(__name__)

APP_FACTORY = "metarec.serve.app:app_from_env"


def reuse_port_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int) -> None:
    """Fail early, in one line, when the port is taken (a plain bind, no SO_REUSEPORT: a socket of
    another server would otherwise silently share the port)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise MetarecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP listening socket with SO_REUSEPORT and TCP_NODELAY."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _worker(host: str, port: int, access_log: bool, ready) -> None:  # pragma: no cover - runs in a child process
    # Ctrl-C in a terminal interrupts every process of its group, and the parent stops the workers itself
    # (SIGTERM). A worker must not die of a KeyboardInterrupt on the way: uvicorn shuts down on SIGINT and
    # then raises it again with the handler it found, which, left at Python's default, prints a traceback
    # from every worker. Ignored here (the parent started this process with SIGINT blocked, so one that
    # arrived during start-up is discarded now instead of interrupting an import).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        """Sets ``ready`` once the app is loaded and its start-up ran: a later death is not a start-up failure."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                ready.set()

    from metarec.serve.protocol import server_options

    sock = listening_socket(host, port)
    config = uvicorn.Config(APP_FACTORY, factory=True, host=host, port=port, access_log=access_log, **server_options())
    AnnouncingServer(config).run(sockets=[sock])


def serve_reuse_port(host: str, port: int, workers: int, *, access_log: bool = True,
                     poll_seconds: float = 0.5) -> None:
    """Run ``workers`` uvicorn processes on ``host:port`` until SIGINT / SIGTERM.

    A worker that dies once it is serving (killed, out of memory) is replaced by a fresh one, so the
    service keeps every core. One that exits before it served (it could not load the model, say) stops
    the others, and the call raises :class:`MetarecError` naming its exit code, rather than restarting
    it forever."""
    if not reuse_port_supported():  # pragma: no cover - not Linux / BSD
        raise MetarecError("this platform has no SO_REUSEPORT; serve with --workers 1")
    check_port_free(host, port)
    context = multiprocessing.get_context("spawn")

    def start(i: int):
        ready = context.Event()
        process = context.Process(target=_worker, args=(host, port, access_log, ready), name=f"metarec-worker-{i}")
        # the child inherits the blocked SIGINT until _worker ignores it: a Ctrl-C while it starts is the
        # parent's to handle (held back here for the few milliseconds of the spawn, then delivered)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return process, ready

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    running: list = []
    failed = None
    try:
        running = [start(i) for i in range(workers)]
        while not stopping and failed is None:
            time.sleep(poll_seconds)
            for i, (process, ready) in enumerate(running):
                if stopping or process.is_alive():
                    continue
                if not ready.is_set():
                    failed = process
                    break
                log.warning("server worker %s exited with code %s; starting a replacement", process.name,
                            process.exitcode)
                running[i] = start(i)
    finally:
        for process, _ in running:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes open requests, then exits
        for process, _ in running:
            process.join(timeout=15)
            if process.is_alive():  # pragma: no cover - a stuck worker
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is not None and not stopping:
        raise MetarecError(f"server worker {failed.name} exited with code {failed.exitcode} before it served; "
                           "stopped the others (see the log above)")
