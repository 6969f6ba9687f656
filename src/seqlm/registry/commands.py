"""The registry by hand: `seqlm models`, `promote`, `rollback` and `serve` (using a model is ``use``).

They read the project's params.yaml (``registry.model_name``) and its tracking store
(``tracking_uri``: the project's sqlite file, or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.registry import gate
from seqlm.tracking.store import check_reachable, connect, server_lost, tracking_uri


def _open() -> tuple:
    """(client, model name, tracking uri) for the project in SEQLM_ROOT or the current directory."""
    from seqlm import config

    paths = Paths.from_env()
    cfg = config.load(paths.params)
    uri = tracking_uri(paths)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise SeqlmError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}; run the pipeline (`dvc repro`) "
            "or set MLFLOW_TRACKING_URI"
        )
    check_reachable(uri)
    client = connect(uri)
    name = cfg.registry.model_name
    if not gate.aliases(client, name) and not client.search_model_versions(f"name = '{name}'"):
        raise SeqlmError(
            f"no registered model {name!r} in {uri}; run the register stage (`dvc repro register`)"
        )
    return client, name, uri


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows as plain-text columns, left-aligned: how every seqlm tool prints a table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def models_table(client, name: str) -> str:
    """One row per version. The gate selects on valid bits/byte; test is shown for reporting only."""
    import datetime as dt

    by_version: dict[int, list[str]] = {}
    for alias, v in gate.aliases(client, name).items():
        by_version.setdefault(v, []).append(alias)
    rows = [("version", "aliases", "valid bits/byte", "test bits/byte", "word ppl", "created", "run id")]
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version)):
        valid, test = gate.tagged_score(mv, "valid"), gate.tagged_score(mv, "test")
        created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
        rows.append(
            (
                str(mv.version),
                ",".join(sorted(by_version.get(int(mv.version), []))) or "-",
                f"{valid.bits_per_byte:.4f}" if valid else "-",
                f"{test.bits_per_byte:.4f}" if test else "-",
                f"{test.word_perplexity:.2f}" if test and test.word_perplexity is not None else "-",
                created,
                mv.run_id or "-",
            )
        )
    return table(rows)


def history_table(client, name: str) -> str:
    """The moves of champion that happened, oldest first (docs/architecture.md, decision 8)."""
    rows = [("#", "version", "previous", "by", "when", "reason")]
    for n, event in enumerate(gate.champion_history(client, name), 1):
        previous = event["previous"]
        when = event["done_at"] or event["recorded_at"]
        reason = " ".join(event["reason"].split())
        rows.append(
            (
                str(n),
                str(event["version"]),
                "-" if previous is None else str(previous),
                event["by"],
                when[:19].replace("T", " "),
                reason,
            )
        )
    return table(rows)


# A server lost mid-command ends it with one line (server_lost) saying what may have changed. A promote that
# may have happened is safe to repeat (it says "already champion"); a rollback is not: a second one moves
# champion back again, so the line asks for `seqlm models --history` first.
LISTED = "nothing was changed; rerun it when the server answers"
MOVED = "champion may or may not have moved: `seqlm models --history` shows it once the server answers"


def cli_models(args) -> None:
    with server_lost("models", LISTED):
        client, name, _ = _open()
        print(f"registered model {name}")
        print(models_table(client, name))
        if getattr(args, "history", False):
            print(f"\nchampion history of {name} (oldest first)")
            print(history_table(client, name))


def cli_promote(args) -> None:
    if not str(args.version).isdigit():
        raise SeqlmError(f"version must be a number (see `seqlm models`), got {args.version!r}")
    version = int(args.version)
    with server_lost("promote", f"{MOVED}; promoting again is safe"):
        client, name, _ = _open()
        previous = gate.promote(client, name, version, args.reason)
    if previous == version:
        print(f"promote: {name} version {version} is already champion")
    else:
        was = previous if previous is not None else "unset"
        print(f"promote: {name} champion is now version {version} (was {was})")


def cli_rollback(args) -> None:
    with server_lost("rollback", f"{MOVED}; roll back again only if it did not"):
        client, name, _ = _open()
        current, target = gate.rollback(client, name)
    print(f"rollback: {name} champion is now version {target} (was {current})")


# A request at the work limit (pyfunc.MAX_TOKENS_PER_REQUEST, 100,000 tokens) takes 1–2.5 minutes on one
# core of a 2-core EPYC. MLflow answers 504 after the timeout but cannot stop the work already started, so
# the timeout only decides when a client stops waiting; it must outlast the largest allowed request.
DEFAULT_TIMEOUT_S = 300
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cores() -> int:
    """CPU cores this process may use (its affinity, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def serve_command(
    name: str, port: int, host: str = "127.0.0.1", workers: int = 1, timeout_s: int = DEFAULT_TIMEOUT_S
) -> list[str]:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    model = f"models:/{name}@{gate.CHAMPION}"
    address = ["-h", host, "-p", str(port), "-w", str(workers), "-t", str(timeout_s)]
    return [str(mlflow_bin), "models", "serve", "-m", model, "--env-manager", "local", *address]


def serve_env(uri: str, workers: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    # the scoring server starts its workers by name, from this environment
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["MLFLOW_TRACKING_URI"] = uri
    # Each worker answers several requests at once in threads, and every torch thread beyond one per
    # core waits for the others: cores ÷ workers intra-op threads each, unless the user chose.
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // workers)))
    return env


def check_serve_args(host: str, port: int, workers: int, timeout_s: int) -> None:
    if not host.strip():
        raise SeqlmError("--host is empty; give an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
    if not 1 <= port <= 65535:
        raise SeqlmError(f"--port must be between 1 and 65535, got {port}")
    if workers < 1:
        raise SeqlmError(f"--workers must be at least 1, got {workers}")
    if timeout_s < 1:
        raise SeqlmError(f"--timeout must be at least 1 second, got {timeout_s}")


def cli_serve(args) -> None:
    workers = cores() if args.workers is None else args.workers
    check_serve_args(args.host, args.port, workers, args.timeout)
    client, name, uri = _open()
    champion = gate.read_champion(client, name)
    if champion is None:
        raise SeqlmError(f"{name} has no champion; run the register stage or `seqlm promote <version>`")
    url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}/invocations"
    print(
        f"serve: {name} version {champion.version} (champion) at {url} "
        f"({workers} worker{'s' * (workers != 1)}, {args.timeout} s timeout)"
    )
    if args.host not in LOOPBACK:
        print(
            f"serve: bound to {args.host}: anyone who can reach port {args.port} can use the model "
            "(no login, request bodies read whole); put an authenticating proxy in front"
        )
    code = subprocess.call(
        serve_command(name, args.port, args.host, workers, args.timeout), env=serve_env(uri, workers)
    )
    if code != 0:
        raise SeqlmError(f"mlflow models serve exited with code {code}; its messages are above")
