"""Serving latency under load: p50 and p99 of `seqlm serve` at 1, 8 and 32 concurrent clients.

    python -P bench/serve_load.py [--url http://127.0.0.1:5001] [--workers N] [--requests 320]
                                  [--clients 1 8 32] [--tasks next_words generate]

Without ``--url`` it starts `seqlm serve --workers N` (default: the machine's cores) on a free port of
127.0.0.1 for the project in SEQLM_ROOT or the current directory, which needs a registered champion
(`make run`), waits for /ping and stops the server afterwards. Each level sends ``--requests`` requests
from that many client threads (stdlib urllib, one request at a time per client, after a warm-up), each a
one-prompt request: next_words with k=5, or generate of 20 tokens. The clients run on the same machine
as the server and take some of its CPU, so each line also gives the CPU milliseconds per request of the
server (all its processes; only for a server started here) and of the clients: with C clients sending back
to back, no p50 can beat C × (server + client CPU per request) ÷ cores, however the server is tuned.
Goal: 32 clients, 0 errors, p99 under 250 ms on next_words with workers = cores. One line per task and
level:

    serve_load task=… clients=… requests=… errors=… p50_ms=… p99_ms=… per_s=… workers=…
               server_cpu_ms=… client_cpu_ms=…
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BODIES = {
    "next_words": {"inputs": {"prompt": ["And God said"]}, "params": {"task": "next_words", "k": 5}},
    "generate": {"inputs": {"prompt": ["In the beginning"]}, "params": {"max_new_tokens": 20, "seed": 1}},
}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workers: int, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [sys.executable, "-m", "seqlm.cli", "serve", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"seqlm serve exited with {proc.returncode}:\n{log.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(f"seqlm serve did not answer {url}/ping within 300 s")


def group_cpu_s(pgid: int | None) -> float:
    """CPU seconds (user + system) used so far by the processes of group ``pgid``: the server we started."""
    if pgid is None:
        return math.nan
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp, …, utime (12), stime (13)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def one_request(url: str, body: bytes) -> str | None:
    """None when answered with 200, else what went wrong."""
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            resp.read()
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return type(exc).__name__


def load(url: str, body: bytes, clients: int, requests: int) -> tuple[list[float], Counter, float]:
    """Latencies (s) of the answered requests, the errors by kind, and the wall time of the level."""
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            error = one_request(url, body)
            elapsed = time.perf_counter() - t0
            with lock:
                if error:
                    errors[error] += 1
                else:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(n,)) for n in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server (default: start `seqlm serve` here)")
    parser.add_argument("--workers", type=int, default=cores(), help="workers of the started server")
    parser.add_argument("--requests", type=int, default=320, help="requests per level (default 320)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="levels (default 1 8 32)")
    parser.add_argument("--tasks", nargs="+", default=["next_words", "generate"], choices=sorted(BODIES))
    args = parser.parse_args()

    with tempfile.TemporaryFile() as log:
        proc, url = (None, args.url) if args.url else start_server(args.workers, log)
        workers = args.workers if proc else "?"
        try:
            for task in args.tasks:
                body = json.dumps(BODIES[task]).encode()
                load(url, body, clients=2, requests=10)  # warm-up: each worker's first requests
                for clients in args.clients:
                    server_s, client_s = group_cpu_s(proc and proc.pid), time.process_time()
                    latencies, errors, wall_s = load(url, body, clients, args.requests)
                    server_s = group_cpu_s(proc and proc.pid) - server_s
                    client_s = time.process_time() - client_s
                    latencies.sort()
                    failed = ",".join(f"{kind}:{n}" for kind, n in errors.items())
                    print(
                        f"serve_load task={task} clients={clients} requests={args.requests} "
                        f"errors={sum(errors.values())}{f' ({failed})' if failed else ''} "
                        f"p50_ms={percentile(latencies, 0.5) * 1000:.0f} "
                        f"p99_ms={percentile(latencies, 0.99) * 1000:.0f} "
                        f"per_s={len(latencies) / wall_s:.1f} workers={workers} "
                        f"server_cpu_ms={server_s / args.requests * 1000:.1f} "
                        f"client_cpu_ms={client_s / args.requests * 1000:.1f}",
                        flush=True,
                    )
        finally:
            if proc:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
