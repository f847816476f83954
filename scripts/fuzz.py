"""Seeded fuzzing of every loader and every endpoint: corrupted data files and hostile HTTP requests.

Each input is a valid one with one random mutation. The outcome must be a clear error (a MetarecError
whose message names the file - and, for a cell, its line and field - or an HTTP 4xx whose detail names a
field), or a result that passes the invariants (finite ratings inside the scale, ids present, finite
scores). A mutation that makes an input garbage (a rating that is not a finite number, a row with a field
too many) must be refused, not accepted. Any other exception is a traceback; any 5xx, a server failure;
an input that takes longer than ``--timeout`` seconds, a hang. Every failure is printed with its seed.

    python scripts/fuzz.py --loaders 6000 --requests 5000          # >= 10,000 inputs (~3 min)
    python scripts/fuzz.py --loaders 200 --requests 200 --seed 1   # what CI runs (tests/test_fuzz.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

NASTY = ["", " ", "NaN", "nan", "inf", "-inf", "1e300", "1e30", "-1e30", "abc", "007", "+7", "1.0", "0x1F",
         "\x00", "é", "😀", "a" * 5000, "-1", "999999999999999999999", '"', '""', "'", ",", ";", "\t", "|",
         "null", "None", "true", "[1, 2]", "{}", "\\", "\r", "1,5", "2020-13-45", "1970-01-01T00:00:00Z"]
ROLES = ["user_id", "item_id", "rating", "timestamp"]
GARBAGE_RATINGS = {"", " ", "NaN", "nan", "inf", "-inf", "1e300", "abc", "\x00", "é", "😀", "a" * 5000, '""',
                   "null", "None", "true", "[1, 2]", "{}", "\\", "0x1F", "999999999999999999999", "1e30", "-1e30"}
GARBAGE_TIMES = {"abc", "inf", "-inf", "1e300", "1e30", "-1e30", "2020-13-45", "\x00", "é", "😀", "a" * 5000,
                 "true", "[1, 2]", "{}", "0x1F", "999999999999999999999"}


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)

    def fail(self, kind: str, seed: int, what: str) -> None:
        self.outcomes[kind] += 1
        if len(self.failures) < 50:
            self.failures.append(f"{kind} [seed {seed}] {what}")


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    def expire(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------- loaders
def valid_rows(rng: random.Random) -> list[list[str]]:
    rows = []
    for u in range(12):
        for i in rng.sample(range(20), 6):
            rows.append([str(u + 1), str(i + 1), str(rng.randint(1, 5)), str(880000000 + len(rows))])
    return rows


def mutate_table(rng: random.Random, rows: list[list[str]], sep: str) -> tuple[bytes, str | None]:
    """The file's bytes and, when the mutation makes it garbage, why it must be refused."""
    header = list(ROLES)
    rows = [list(r) for r in rows]
    kind = rng.choice(["cell", "cell", "cell", "extra_field", "missing_field", "truncate", "bytes", "empty",
                       "header_only", "no_header", "bad_utf8", "blank_lines", "duplicate_header"])
    must_refuse = None
    if kind == "cell":
        r, c = rng.randrange(len(rows)), rng.randrange(4)
        value = rng.choice(NASTY)
        rows[r][c] = value
        if c == 2 and value in GARBAGE_RATINGS | {"-1", "1,5"}:
            must_refuse = f"rating {value!r}"
        if c == 3 and value in GARBAGE_TIMES:
            must_refuse = f"timestamp {value!r}"
        if c in (0, 1) and value.strip() == "":
            must_refuse = "empty id"
    elif kind == "extra_field":
        rows[rng.randrange(len(rows))].append(rng.choice(["9", "x", ""]))
        must_refuse = "a row with a field too many"
    elif kind == "missing_field":
        rows[rng.randrange(len(rows))].pop()
        must_refuse = None  # a missing trailing timestamp may be read as empty (an unknown time)
    elif kind == "empty":
        return b"", "an empty file"
    elif kind == "header_only":
        return (sep.join(header) + "\n").encode(), "a header and no rows"
    elif kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))), None
    text = ("" if kind == "no_header" else sep.join(header) + "\n") + "".join(
        sep.join(_quote(v, sep) for v in r) + ("\n\n" if kind == "blank_lines" and rng.random() < 0.1 else "\n")
        for r in rows)
    if kind == "duplicate_header":
        text += sep.join(header) + "\n"
        must_refuse = "a second header line (a rating 'rating')"
    data = text.encode("utf-8")
    if kind == "truncate":
        data = data[: rng.randrange(len(data))]
    if kind == "bad_utf8":
        cut = rng.randrange(len(data))
        data = data[:cut] + b"\xff\xfe" + data[cut:]
        must_refuse = "bytes that are not utf-8"
    return data, must_refuse


def mutate_parquet(rng: random.Random, rows: list[list[str]], path: Path) -> str | None:
    """Write a Parquet file whose one column holds values of a random (often wrong) type; why it must be
    refused (None: it may load)."""
    frame = pd.DataFrame(rows, columns=ROLES)
    frame["rating"] = frame["rating"].astype(float)
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    column = rng.choice(ROLES)
    n = len(frame)
    kind = rng.choice(["bool", "bytes", "list", "fraction", "whole", "int", "nan", "inf", "huge", "text"])
    values = {"bool": [rng.random() < 0.5 for _ in range(n)], "bytes": [str(v).encode() for v in frame[column]],
              "list": [[v] for v in frame[column]], "fraction": [rng.uniform(0, 9) for _ in range(n)],
              "whole": [float(rng.randint(1, 5)) for _ in range(n)], "int": [rng.randint(1, 5) for _ in range(n)],
              "nan": [float("nan")] * n, "inf": [float("inf")] * n, "huge": [1e300] * n,
              "text": [rng.choice(NASTY) or "x" for _ in range(n)]}[kind]
    frame[column] = values
    frame.to_parquet(path)
    ids = column in ("user_id", "item_id")
    if kind in ("bool", "bytes", "list") and column != "timestamp":
        return f"{kind} values in {column}"
    if ids and kind in ("fraction", "nan", "inf", "huge"):
        return f"{kind} ids"
    if column == "rating" and kind in ("nan", "inf", "huge", "text"):
        return f"{kind} ratings"
    if column == "timestamp" and kind in ("inf", "huge", "list", "bytes"):
        return f"{kind} timestamps"
    return None


def _quote(value: str, sep: str) -> str:
    if any(ch in value for ch in (sep, "\n", "\r", '"')) and value not in ('"', '""'):
        return '"' + value.replace('"', '""') + '"'
    return value


def check_dataset(dataset) -> str | None:
    """Why a loaded dataset is garbage (None: it is sound)."""
    ratings = dataset.ratings
    values = ratings["rating"].to_numpy(dtype=np.float64)
    low, high = dataset.rating_scale
    if not len(ratings):
        return "no ratings loaded"
    if not np.isfinite(values).all() or not (math.isfinite(low) and math.isfinite(high)):
        return "non-finite rating or scale"
    if (values < low).any() or (values > high).any():
        return "a rating outside the scale"
    if high - low > 1000:
        return f"a rating scale {low:g}-{high:g} from a typo"
    for col in ("user_id", "item_id"):
        ids = ratings[col].astype(str)
        if ids.str.strip().eq("").any() or ratings[col].isna().any():
            return f"an empty {col}"
    return None


def fuzz_loaders(n: int, seed: int, tally: Tally, timeout: float, folder: Path) -> None:
    from metarec.data.loaders.movielens import load_ml100k
    from metarec.data.loaders.tabular import load_table
    from metarec.errors import MetarecError

    for k in range(n):
        rng = random.Random(seed * 1_000_003 + k)
        fmt = rng.choice(["csv", "tsv", "ml-100k", "parquet"])
        rows = valid_rows(rng)
        if fmt == "ml-100k":
            target = folder / f"ml{k}"
            target.mkdir()
            data, refuse = mutate_table(rng, rows, "\t")
            lines = data.split(b"\n")
            body = b"\n".join(lines[1:]) if lines and lines[0].startswith(b"user_id") else data
            (target / "u.data").write_bytes(body)  # MovieLens files have no header line
            if refuse == "bytes that are not utf-8" and b"\xff\xfe" not in body:
                refuse = None  # they were in the header, which is not written
            (target / "u.user").write_text("".join(f"{u + 1}|30|M|writer|12345\n" for u in range(12)), encoding="latin-1")
            (target / "u.item").write_text("".join(f"{i + 1}|Film {i + 1} (1995)|01-Jan-1995||url" + "|0" * 19 + "\n"
                                                   for i in range(20)), encoding="latin-1")
            path, load = target / "u.data", lambda: load_ml100k(target)
            if refuse and "header" in refuse:
                refuse = None if refuse == "a second header line (a rating 'rating')" else refuse
        elif fmt == "parquet":
            path = folder / f"p{k}.parquet"
            try:
                refuse = mutate_parquet(rng, rows, path)
            except Exception:  # noqa: BLE001 - pyarrow cannot write that mix: not an input we can make
                tally.outcomes["not writable as Parquet"] += 1
                continue
            load = (lambda p=path: load_table(p))
        else:
            sep = "," if fmt == "csv" else "\t"
            data, refuse = mutate_table(rng, rows, sep)
            if refuse == "rating '-1'":  # a table's scale is what it holds: -1 may be a real rating there
                refuse = None
            path = folder / f"t{k}.{fmt}"
            path.write_bytes(data)
            load = (lambda p=path: load_table(p))
        try:
            with deadline(timeout):
                dataset = load()
        except Hang:
            tally.fail("hang", k, f"{fmt} {path.name}")
            continue
        except MetarecError as exc:
            if path.name not in str(exc) and path.parent.name not in str(exc):
                tally.fail("unclear error", k, f"{fmt}: {exc!s:.200}")
            else:
                tally.outcomes["refused, clearly"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the point: no other exception may escape
            tally.fail("traceback", k, f"{fmt}: {type(exc).__name__}: {exc!s:.200}")
            continue
        problem = check_dataset(dataset)
        if problem is not None:
            tally.fail("garbage accepted", k, f"{fmt}: {problem}")
        elif refuse is not None:
            tally.fail("garbage accepted", k, f"{fmt}: {refuse} was loaded")
        else:
            tally.outcomes["loaded, sound"] += 1


# ---------------------------------------------------------------------------------------------- endpoints
def junk(rng: random.Random, depth: int = 0):
    """A random JSON-ish value: scalars of every type, NaN / inf, huge numbers, nested lists and objects."""
    makers = [lambda: None, lambda: True, lambda: rng.randint(-10**20, 10**20), lambda: rng.uniform(-1e300, 1e300),
              lambda: float("nan"), lambda: float("inf"), lambda: rng.choice(NASTY), lambda: -0.0, lambda: 10**400,
              lambda: [junk(rng, depth + 1) for _ in range(rng.randrange(3))],
              lambda: {rng.choice(NASTY): junk(rng, depth + 1) for _ in range(rng.randrange(3))}]
    return makers[rng.randrange(len(makers) if depth < 2 else len(makers) - 2)]()


def request(rng: random.Random, ids: list[str], users: dict) -> tuple[str, str, object]:
    """(method, path, JSON body or raw bytes)."""
    ratings = [{"item_id": i, "rating": rng.choice([1, 3, 5])} for i in rng.sample(ids, rng.randint(1, 5))]
    bodies = {
        "/v1/recommend": {"ratings": ratings, "k": rng.randint(1, 20), "user": dict(users)},
        "/v1/predict": {"ratings": ratings, "item_ids": rng.sample(ids, 3)},
        "/v1/onboarding": {"n": 5, "shown": rng.sample(ids, 4), "rated": ids[:1]},
    }
    if rng.random() < 0.1:
        return "GET", rng.choice(["/v1/onboarding?n=" + quote(str(junk(rng)), safe=""),
                                  "/v1/items/" + quote(str(rng.choice(NASTY + ids)), safe=""),
                                  "/v1/model", "/healthz", "/v1/onboarding"]), None
    path = rng.choice(list(bodies))
    body = json.loads(json.dumps(bodies[path]))
    kind = rng.randrange(6)
    if kind == 0:  # a random field replaced by junk
        key = rng.choice(list(body))
        body[key] = junk(rng)
    elif kind == 1 and body.get("ratings"):  # a rating's field replaced by junk
        entry = rng.choice(body["ratings"])
        entry[rng.choice(["item_id", "rating", "extra"])] = junk(rng)
    elif kind == 2:
        body.pop(rng.choice(list(body)))
    elif kind == 3:
        body[rng.choice(NASTY) or "x"] = junk(rng)
    elif kind == 4:
        raw = json.dumps(body, allow_nan=True).encode()
        return "POST", path, raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw.replace(b"5", b"NaN", 1)
    elif kind == 5 and "user" in body:
        body["user"] = {rng.choice(list(users) + ["nope"]): junk(rng)}
    return "POST", path, body


def check_response(response) -> str | None:
    if response.status_code >= 500:
        return f"HTTP {response.status_code}"
    if response.status_code == 422:
        detail = response.json().get("detail")
        if not isinstance(detail, list) or not all(isinstance(d, dict) and d.get("loc") for d in detail):
            return f"422 without a field: {response.text[:200]}"
    if response.status_code == 200 and response.request.url.path in ("/v1/recommend", "/v1/predict"):
        for item in response.json().get("items", []):
            score = item.get("score")
            if not isinstance(score, (int, float)) or not math.isfinite(score):
                return f"a score that is not a finite number: {item}"
    return None


def fuzz_endpoints(n: int, seed: int, tally: Tally, timeout: float) -> None:
    from fastapi.testclient import TestClient

    from metarec.data import load_dataset
    from metarec.meta.run import RunConfig
    from metarec.serve import ColdStartRecommender, create_app

    dataset = load_dataset("synthetic")
    config = RunConfig.preset("feature-mlp", "maml").override("train", epochs=1, threads=1)
    recommender = ColdStartRecommender().fit(dataset, config=config)
    ids = recommender.onboarding_items(30)["item_id"].tolist()
    user = {name: dataset.users[name].dropna().iloc[0] for name in recommender.user_attributes}
    user = json.loads(json.dumps(user, default=str))
    with TestClient(create_app(recommender, max_k=50), raise_server_exceptions=False) as client:
        for k in range(n):
            rng = random.Random(seed * 7_919 + k)
            method, path, body = request(rng, ids, user)
            try:
                with deadline(timeout):
                    if method == "GET":
                        response = client.get(path)
                    elif isinstance(body, bytes):
                        response = client.post(path, content=body, headers={"content-type": "application/json"})
                    else:
                        response = client.post(path, content=json.dumps(body, allow_nan=True),
                                               headers={"content-type": "application/json"})
            except Hang:
                tally.fail("hang", k, f"{method} {path}")
                continue
            problem = check_response(response)
            if problem:
                tally.fail("server failure", k, f"{method} {path} {str(body)[:150]}: {problem}")
            else:
                tally.outcomes[f"HTTP {response.status_code // 100}xx"] += 1


def run(loaders: int, requests: int, seed: int, timeout: float = 10.0) -> Tally:
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="metarec-fuzz-") as tmp:
        fuzz_loaders(loaders, seed, tally, timeout, Path(tmp))
        left = sorted(p.name for p in Path(tmp).rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")
        if left:
            tally.fail("temp files left", seed, ", ".join(left[:5]))
    if requests:
        fuzz_endpoints(requests, seed, tally, timeout)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loaders", type=int, default=6000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tally = run(args.loaders, args.requests, args.seed, args.timeout)
    print(f"# fuzz: {args.loaders} data files, {args.requests} requests, seed {args.seed}, "
          f"{time.perf_counter() - started:.0f}s")
    for outcome, count in sorted(tally.outcomes.items()):
        print(f"{outcome}: {count}")
    for line in tally.failures:
        print("FAIL", line)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
