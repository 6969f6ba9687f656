"""`seqlm models`, `seqlm promote`, `seqlm rollback` and `seqlm serve`: the registry by hand.

Each reads the project's params.yaml (``registry.model_name``) and its tracking store
(``tracking.tracking_uri``: the project's sqlite file, or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from seqlm import promotion, tracking
from seqlm.errors import SeqlmError
from seqlm.paths import Paths

def _open() -> tuple:
    """(client, model name, tracking uri) for the project in SEQLM_ROOT or the current directory."""
    from seqlm import config

    paths = Paths.from_env()
    cfg = config.load(paths.params)
    uri = tracking.tracking_uri(paths)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise SeqlmError(f"no MLflow store at {uri.removeprefix('sqlite:///')}; run the pipeline (`dvc repro`) or set MLFLOW_TRACKING_URI")
    tracking.check_reachable(uri)
    client = tracking.client(uri)
    name = cfg.registry.model_name
    if not promotion.aliases(client, name) and not client.search_model_versions(f"name = '{name}'"):
        raise SeqlmError(f"no registered model {name!r} in {uri}; run the register stage (`dvc repro register`)")
    return client, name, uri


def models_table(client, name: str) -> str:
    import datetime as dt

    by_version: dict[int, list[str]] = {}
    for alias, v in promotion.aliases(client, name).items():
        by_version.setdefault(v, []).append(alias)
    rows = [("version", "aliases", "test bits/byte", "word ppl", "created", "run id")]
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version)):
        score = promotion.tagged_score(mv)
        created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
        rows.append((
            str(mv.version),
            ",".join(sorted(by_version.get(int(mv.version), []))) or "-",
            f"{score.bits_per_byte:.4f}" if score else "-",
            f"{score.word_perplexity:.2f}" if score and score.word_perplexity is not None else "-",
            created,
            mv.run_id or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def cli_models(args) -> None:
    client, name, _ = _open()
    print(f"registered model {name}")
    print(models_table(client, name))


def cli_promote(args) -> None:
    client, name, _ = _open()
    if not str(args.version).isdigit():
        raise SeqlmError(f"version must be a number (see `seqlm models`), got {args.version!r}")
    version = int(args.version)
    previous = promotion.promote(client, name, version, args.reason)
    if previous == version:
        print(f"promote: {name} version {version} is already champion")
    else:
        print(f"promote: {name} champion is now version {version} (was {previous if previous is not None else 'unset'})")


def cli_rollback(args) -> None:
    client, name, _ = _open()
    current, target = promotion.rollback(client, name)
    print(f"rollback: {name} champion is now version {target} (was {current})")


def serve_command(name: str, port: int) -> list[str]:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return [str(mlflow_bin), "models", "serve", "-m", f"models:/{name}@{promotion.CHAMPION}",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip


def serve_env(uri: str) -> dict[str, str]:
    env = dict(os.environ)
    # the scoring server starts its workers by name, from this environment
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["MLFLOW_TRACKING_URI"] = uri
    return env


def cli_serve(args) -> None:
    client, name, uri = _open()
    champion = promotion.read_champion(client, name)
    if champion is None:
        raise SeqlmError(f"{name} has no champion; run the register stage or `seqlm promote <version>`")
    print(f"serve: {name} version {champion.version} (champion) at http://127.0.0.1:{args.port}/invocations")
    code = subprocess.call(serve_command(name, args.port), env=serve_env(uri))
    if code != 0:
        raise SeqlmError(f"mlflow models serve exited with code {code}; its messages are above")
