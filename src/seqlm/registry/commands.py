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
from seqlm.tracking.store import check_reachable, connect, tracking_uri


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


def cli_models(args) -> None:
    client, name, _ = _open()
    print(f"registered model {name}")
    print(models_table(client, name))
    if getattr(args, "history", False):
        print(f"\nchampion history of {name} (oldest first)")
        print(history_table(client, name))


def cli_promote(args) -> None:
    client, name, _ = _open()
    if not str(args.version).isdigit():
        raise SeqlmError(f"version must be a number (see `seqlm models`), got {args.version!r}")
    version = int(args.version)
    previous = gate.promote(client, name, version, args.reason)
    if previous == version:
        print(f"promote: {name} version {version} is already champion")
    else:
        was = previous if previous is not None else "unset"
        print(f"promote: {name} champion is now version {version} (was {was})")


def cli_rollback(args) -> None:
    client, name, _ = _open()
    current, target = gate.rollback(client, name)
    print(f"rollback: {name} champion is now version {target} (was {current})")


def serve_command(name: str, port: int) -> list[str]:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    model = f"models:/{name}@{gate.CHAMPION}"
    address = ["-h", "127.0.0.1", "-p", str(port)]
    return [str(mlflow_bin), "models", "serve", "-m", model, "--env-manager", "local", *address]


def serve_env(uri: str) -> dict[str, str]:
    env = dict(os.environ)
    # the scoring server starts its workers by name, from this environment
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["MLFLOW_TRACKING_URI"] = uri
    return env


def cli_serve(args) -> None:
    client, name, uri = _open()
    champion = gate.read_champion(client, name)
    if champion is None:
        raise SeqlmError(f"{name} has no champion; run the register stage or `seqlm promote <version>`")
    print(f"serve: {name} version {champion.version} (champion) at http://127.0.0.1:{args.port}/invocations")
    code = subprocess.call(serve_command(name, args.port), env=serve_env(uri))
    if code != 0:
        raise SeqlmError(f"mlflow models serve exited with code {code}; its messages are above")
