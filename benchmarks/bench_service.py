"""Load test of the HTTP service: the real server (``metarec serve``, uvicorn) on loopback, many clients.

Starts ``python -m metarec.cli serve FOLDER`` on 127.0.0.1 and a free port, waits for ``/healthz``,
then ``--clients`` keep-alive connections (on one asyncio loop, pre-encoded requests; ``--client threads``:
one ``http.client`` thread each) send ``--requests``
``POST /v1/recommend`` calls in total, each for a random new user with 5 ratings of catalogue items.
Prints p50 / p90 / p99 latency (ms), requests per second and the error count, then stops the server.
It also prints the CPU time the server (all its processes) and the load generator spent per request:
on a machine with few cores, latency at a fixed number of clients is roughly
clients x (server + client CPU per request) / cores, which is what a latency target has to beat.

    python benchmarks/bench_service.py runs/ml100k                 # a recommender or `metarec train` folder
    python benchmarks/bench_service.py --train-quick ml-100k       # train 2 epochs into a temp folder first
    python benchmarks/bench_service.py FOLDER --workers 2 --repeat 3   # 3 measured rounds, one server

Only loopback traffic; the server is the child process this script started, and it is stopped at exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def train_quick(dataset: str, out: Path, epochs: int, threads: int | None, config_path: Path | None = None) -> Path:
    """A small model (``config_path``'s, else feature-mlp MAML; few epochs) saved as a recommender folder."""
    from metarec.data import load_dataset
    from metarec.meta.run import RunConfig
    from metarec.serve import ColdStartRecommender

    start = time.perf_counter()
    base = RunConfig.from_toml(config_path) if config_path else RunConfig.preset("feature-mlp", "maml")
    config = base.override("train", epochs=epochs, threads=threads)
    recommender = ColdStartRecommender().fit(load_dataset(dataset), config=config, run_dir=out / "run")
    folder = recommender.save(out / "recommender")
    print(f"trained {dataset} ({epochs} epochs) in {time.perf_counter() - start:.1f} s -> {folder}", flush=True)
    return folder


def catalogue_ids(folder: Path) -> list[str]:
    """Item ids of a recommender, run or checkpoint folder, read from its JSON (no model loaded here)."""
    for candidate in (folder / "checkpoint", folder / "best", folder / "last", folder):
        spec = candidate / "checkpoint.json"
        if spec.exists():
            return list(json.loads(spec.read_text(encoding="utf-8"))["item_ids"])
    raise SystemExit(f"{folder}: no checkpoint.json found (expected a recommender or run folder)")


def start_server(folder: Path, port: int, api_key: str, workers: int, log: Path, extra: list[str]) -> subprocess.Popen:
    """The real CLI entry point; the key goes by environment (never on the command line)."""
    env = {**os.environ, "METAREC_API_KEY": api_key}
    cmd = [sys.executable, "-m", "metarec.cli", "serve", str(folder), "--host", HOST, "--port", str(port),
           "--workers", str(workers), *extra]
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would stall the server
        return subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float, log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server we started (uvicorn shuts down its workers), SIGKILL to its group if stuck."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children (uvicorn's workers), from /proc; 0 elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(int(c) for c in children)
    return total


def connections_per_process(pid: int, port: int) -> list[int]:
    """Established connections to ``port`` held by each process of the server's tree (Linux /proc; [] else).

    With several workers, each keep-alive connection stays with the worker that accepted it, so an
    uneven split (say 11 / 5) makes one worker the bottleneck: printed with every round."""
    try:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    inodes.add(cols[9])
        counts, todo = [], [pid]
        while todo:
            p = todo.pop()
            n = 0
            for fd in Path(f"/proc/{p}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    n += 1
            if n:
                counts.append(n)
            todo.extend(int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split())
        return sorted(counts, reverse=True)
    except (OSError, ValueError, IndexError):
        return []


def get_json(port: int, path: str, api_key: str) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", path, headers={"X-API-Key": api_key})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status != 200:
        raise SystemExit(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
    return json.loads(body)


def make_bodies(ids: list[str], n: int, scale: tuple[float, float], k: int, seed: int) -> list[bytes]:
    import random

    rng = random.Random(seed)
    low, high = int(scale[0]), int(scale[1])
    bodies = []
    for _ in range(n):
        ratings = [{"item_id": i, "rating": rng.randint(low, high)} for i in rng.sample(ids, 5)]
        bodies.append(json.dumps({"ratings": ratings, "k": k}).encode())
    return bodies


def drive(port: int, api_key: str, bodies: list[bytes], clients: int) -> tuple[list[float], int, float, list[str]]:
    """Send every body once, ``clients`` at a time, from threads with one ``http.client`` connection each;
    per-request latency (s), error count, wall time. Simple, but the clients' own Python (and its GIL)
    costs about as much CPU as the server, on the same cores: see :func:`drive_lean`."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))
    headers = {"Content-Type": "application/json", "X-API-Key": api_key}

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        mine: list[float] = []
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/recommend", body=bodies[i], headers=headers)
                response = conn.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    with lock:
                        errors.append(f"HTTP {response.status}: {payload[:120]!r}")
                    continue
                mine.append(elapsed)
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(errors), time.perf_counter() - start, errors[:3]


def drive_lean(port: int, api_key: str, bodies: list[bytes], clients: int) -> tuple[list[float], int, float, list[str]]:
    """As :func:`drive`, but ``clients`` keep-alive connections on one asyncio loop sending pre-encoded
    HTTP/1.1 requests and reading responses by Content-Length: a load generator that leaves the cores to
    the server, as a separate load-generation machine (or wrk) would. Same requests, same checks."""
    import asyncio

    head = (f"POST /v1/recommend HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {api_key}\r\nContent-Length: ").encode()
    requests = [head + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
    latencies: list[float] = []
    errors: list[str] = []
    next_index = iter(range(len(requests)))

    async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        header = await reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        else:
            raise ValueError(f"response without Content-Length: {header[:200]!r}")
        return status, await reader.readexactly(length)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in next_index:
            start = time.perf_counter()
            try:
                writer.write(requests[i])
                status, payload = await read_response(reader)
                elapsed = time.perf_counter() - start
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                errors.append(repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            if status != 200:
                errors.append(f"HTTP {status}: {payload[:120]!r}")
            else:
                latencies.append(elapsed)
        writer.close()

    async def run() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))

    start = time.perf_counter()
    asyncio.run(run())
    return latencies, len(errors), time.perf_counter() - start, errors[:3]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, help="recommender folder or `metarec train` run folder")
    parser.add_argument("--train-quick", metavar="DATASET", help="train a small model on DATASET first (temp folder)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of --train-quick")
    parser.add_argument("--config", type=Path, default=None,
                        help="run.toml for --train-quick's model (default: feature-mlp, MAML)")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="torch threads of --train-quick (1 avoids OpenMP spinning on a shared machine; 0: torch's default)")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests in total")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (keep-alive connections)")
    parser.add_argument("--client", choices=("lean", "threads"), default="lean",
                        help="load generator: lean (asyncio, pre-encoded requests; default) or threads (http.client)")
    parser.add_argument("--warmup", type=int, default=64, help="unmeasured requests first")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--no-batching", action="store_true", help="serve with --no-batching (one request per call)")
    parser.add_argument("--batch-size", type=int, default=None, help="server --batch-size")
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="server --batch-wait-ms")
    parser.add_argument("--repeat", type=int, default=1, help="measured rounds against the same server")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more `metarec serve` argument, e.g. --server-arg=--switch-interval-ms=0 (repeatable)")
    parser.add_argument("--k", type=int, default=10, help="items per recommendation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    if (args.folder is None) == (args.train_quick is None):
        parser.error("give a folder or --train-quick DATASET (one of them)")

    extra = ["--no-batching"] if args.no_batching else []
    if args.batch_size is not None:
        extra += ["--batch-size", str(args.batch_size)]
    if args.batch_wait_ms is not None:
        extra += ["--batch-wait-ms", str(args.batch_wait_ms)]
    extra += args.server_arg
    rounds = []
    with tempfile.TemporaryDirectory(prefix="metarec-bench-") as tmp:
        folder = train_quick(args.train_quick, Path(tmp), args.epochs, args.train_threads or None, args.config) if args.train_quick else args.folder
        ids = catalogue_ids(folder)
        port, api_key = free_port(), secrets.token_urlsafe(16)
        started = time.perf_counter()
        log = Path(tmp) / "server.log"
        proc = start_server(folder, port, api_key, args.workers, log, extra)
        try:
            health = wait_healthy(proc, port, args.startup_timeout, log)
            startup = time.perf_counter() - started
            model = get_json(port, "/v1/model", api_key)
            bodies = make_bodies(ids, args.warmup + args.requests * args.repeat, tuple(model["rating_scale"]),
                                 args.k, args.seed)
            send = drive_lean if args.client == "lean" else drive
            if args.warmup:
                send(port, api_key, bodies[: args.warmup], args.clients)
            for r in range(args.repeat):
                chunk = bodies[args.warmup + r * args.requests: args.warmup + (r + 1) * args.requests]
                load_before = os.getloadavg()  # before this round: mostly other work on the machine
                split: list[int] = []
                sampler = threading.Timer(0.5, lambda: split.extend(connections_per_process(proc.pid, port)))
                server_cpu, client_cpu = process_tree_cpu(proc.pid), time.process_time()
                sampler.start()
                latencies, n_errors, wall, samples = send(port, api_key, chunk, args.clients)
                sampler.cancel()
                server_cpu, client_cpu = process_tree_cpu(proc.pid) - server_cpu, time.process_time() - client_cpu
                rounds.append((latencies, n_errors, wall, samples, server_cpu, client_cpu, load_before, list(split)))
        finally:
            stop_server(proc)
    if not args.json:
        print(f"{model['dataset']} ({model['n_items']} items, model {health['model_version']}), "
              f"{args.workers} worker(s), batching {'off' if args.no_batching else 'on'} {' '.join(extra)}, "
              f"{args.clients} {args.client} clients, {args.requests} requests, k={args.k}, {os.cpu_count()} CPUs; "
              f"server up in {startup:.2f} s")
    for latencies, n_errors, wall, samples, server_cpu, client_cpu, load, split in rounds:
        ms = [x * 1000 for x in latencies]
        n = max(1, len(ms) + n_errors)
        result = {
            "dataset": model["dataset"], "n_items": model["n_items"], "model_version": health["model_version"],
            "workers": args.workers, "batching": not args.no_batching, "server_options": extra,
            "clients": args.clients, "client": args.client, "requests": args.requests, "k": args.k,
            "startup_s": round(startup, 2), "p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2), "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
            "requests_per_s": round(len(ms) / wall, 1) if wall else None, "errors": n_errors, "cpus": os.cpu_count(),
            "server_cpu_ms_per_request": round(1000 * server_cpu / n, 3),
            "client_cpu_ms_per_request": round(1000 * client_cpu / n, 3),
            # other work on the machine skews every number: the 1, 5 and 15 minute load averages before the round
            "load_average_before": [round(x, 2) for x in load],
            "connections_per_worker": split,
        }
        if args.json:
            print(json.dumps(result))
            continue
        print(f"  latency p50 {result['p50_ms']} ms   p90 {result['p90_ms']} ms   p99 {result['p99_ms']} ms   "
              f"mean {result['mean_ms']} ms   | {result['requests_per_s']} requests/s   errors {n_errors}   | "
              f"CPU per request: server {result['server_cpu_ms_per_request']} ms, "
              f"client {result['client_cpu_ms_per_request']} ms   | connections per worker {split}   | "
              f"load average before {result['load_average_before']}")
        for sample in samples:
            print(f"  error sample: {sample}")


if __name__ == "__main__":
    main()
