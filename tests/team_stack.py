"""A team's tracking stack on 127.0.0.1, for integration tests: PostgreSQL, an S3 store (moto's server mode)
and `mlflow server` over both, proxying artifacts so that clients need only ``MLFLOW_TRACKING_URI``.

The same commands as README's "Team setup". Each piece is a context manager that kills what it started
(process groups) on the way out, so a fixture can hold the whole stack for a module; ``moto_s3`` alone
serves any test that needs an S3 endpoint (a DVC remote, say). PostgreSQL comes from Debian's
``postgresql`` package, which ``make test`` installs when ``initdb`` is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

MLFLOW = str(Path(sys.executable).parent / "mlflow")
S3_KEYS = {"AWS_ACCESS_KEY_ID": "seqlm-test", "AWS_SECRET_ACCESS_KEY": "seqlm-test-secret"}
REGION = "us-east-1"
PG_USER, PG_PASSWORD, PG_DATABASE = "mlflow", "mlflow-test-password", "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path, **popen) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )


def stop(proc: subprocess.Popen, first: int = signal.SIGTERM) -> None:
    """Signal the whole process group, then kill what is left."""
    for sig, wait_s in ((first, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited with {proc.returncode} before answering:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def postgres_bin() -> Path:
    """The folder of ``initdb`` and ``postgres``: Debian keeps them off PATH, under its version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        pytest.fail("PostgreSQL is not installed: run `make test` (it installs Debian's postgresql package)")
    return Path(initdb).parent


def _server_user() -> str | None:
    """initdb and postgres refuse to run as root: as root, run them as ``postgres`` (or ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    pytest.fail("running as root and neither a postgres nor a nobody user exists for PostgreSQL")


@contextlib.contextmanager
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (and a unix socket in its folder); yields its URI.

    The cluster lives in its own folder under /tmp rather than pytest's tmp_path, which is private to the
    user running pytest (0700) and so unreadable to the ``postgres`` user the server must run as.
    """
    bin_dir, user = postgres_bin(), _server_user()
    home = Path(tempfile.mkdtemp(prefix="seqlm-pg-"))
    data, log, pwfile = home / "data", home / "postgres.log", home / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if user is not None:
        owner = pwd.getpwnam(user)
        os.chown(home, owner.pw_uid, owner.pw_gid)
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    as_user = {"user": user, "cwd": home} if user is not None else {"cwd": home}
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}"]
    initdb += ["--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync"]
    done = subprocess.run(initdb, env=env, capture_output=True, text=True, **as_user)
    if done.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"initdb failed:\n{done.stdout}\n{done.stderr}")
    port = free_port()
    # Durability off: a test cluster that dies with the test need not survive a power cut.
    cmd = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(home)]
    cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"]
    cmd += ["-c", "full_page_writes=off"]
    proc = start(cmd, env, log, **as_user)
    try:
        _wait_for_postgres(proc, port, log)
        _create_database(port)
        yield f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{PG_DATABASE}"
    finally:
        stop(proc, first=signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for clients to leave
        shutil.rmtree(home, ignore_errors=True)


def _connect(port: int, database: str = "postgres"):
    import psycopg  # psycopg 3: SQLAlchemy 2.1's driver for postgresql:// URIs, so MLflow's too

    # autocommit: CREATE DATABASE cannot run inside a transaction
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=PG_USER,
        password=PG_PASSWORD,
        dbname=database,
        connect_timeout=3,
        autocommit=True,
    )


def _wait_for_postgres(proc: subprocess.Popen, port: int, log: Path, timeout_s: float = 60) -> None:
    import psycopg

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"postgres exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _connect(port).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.3)
    pytest.fail(f"postgres did not accept connections within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _create_database(port: int) -> None:
    with _connect(port) as conn:
        conn.execute(f"CREATE DATABASE {PG_DATABASE}")


def query(uri: str, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` run directly on the PostgreSQL behind the stack (to see where MLflow wrote)."""
    import psycopg

    with psycopg.connect(uri) as conn:
        return conn.execute(sql, args).fetchall()


@contextlib.contextmanager
def moto_s3(*buckets: str):
    """moto's S3 in server mode on 127.0.0.1, in a thread of this process; yields the endpoint URL.

    Any access key is accepted; give S3_KEYS to the clients that should reach it (and only to them).
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for bucket in buckets:
            s3_client(endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def s3_client(endpoint: str):
    import boto3

    keys = {k.lower(): v for k, v in S3_KEYS.items()}
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **keys)


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix`` (paginated: a logged model is dozens of objects)."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def server_env(s3_endpoint: str) -> dict:
    """The S3 endpoint and keys go to the tracking server only; clients reach artifacts through it."""
    env = os.environ | S3_KEYS | {"AWS_DEFAULT_REGION": REGION, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    # One worker and no job runner: ready in seconds at ~0.5 GB (the defaults start 4 workers and 7 job
    # processes).
    return env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def client_env(tracking_uri: str, base: dict | None = None) -> dict:
    """A client's environment: the tracking URI and no way to reach S3 by itself."""
    env = dict(os.environ if base is None else base)
    for key in (*S3_KEYS, "AWS_SESSION_TOKEN", "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(key, None)
    return env | {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_destination: str, env: dict, log: Path):
    port = free_port()
    cmd = [MLFLOW, "server", "--backend-store-uri", backend_uri, "--artifacts-destination"]
    cmd += [artifacts_destination, "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    proc = start(cmd, env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/health", proc, log, timeout_s=180)  # the first start migrates the schema
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def sqlite_server(store: Path):
    """A real `mlflow server` on 127.0.0.1 over a sqlite store and served artifacts in ``store``; its URL.

    One worker and no job runner: ready in seconds at ~0.5 GB (the defaults start 4 workers and 7 job
    processes).
    """
    store.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    backend, artifacts = f"sqlite:///{store / 'mlflow.db'}", str(store / "artifacts")
    with mlflow_server(backend, artifacts, env, store / "server.log") as url:
        yield url


@dataclass(frozen=True)
class TeamStack:
    tracking_uri: str  # what users set as MLFLOW_TRACKING_URI
    database_uri: str  # the server's --backend-store-uri
    s3_endpoint: str  # the server's MLFLOW_S3_ENDPOINT_URL
    bucket: str
    artifacts_prefix: str  # --artifacts-destination is s3://<bucket>/<artifacts_prefix>
    server_log: Path


@contextlib.contextmanager
def team_stack(workdir: Path, bucket: str = "seqlm-mlflow", prefix: str = "mlartifacts"):
    """PostgreSQL + S3 + `mlflow server` proxying artifacts; everything stopped on exit."""
    log = workdir / "mlflow-server.log"
    with postgres() as database, moto_s3(bucket) as endpoint:
        with mlflow_server(database, f"s3://{bucket}/{prefix}", server_env(endpoint), log) as url:
            yield TeamStack(url, database, endpoint, bucket, prefix, log)


def as_client(mp: pytest.MonkeyPatch, stack: TeamStack, root: Path) -> None:
    """This process as a user of the shared server: MLFLOW_TRACKING_URI only, no S3 keys or endpoint."""
    env = client_env(stack.tracking_uri)
    for key in set(os.environ) - set(env):
        mp.delenv(key)
    for key in ("MLFLOW_TRACKING_URI", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        mp.setenv(key, env[key])
    mp.setenv("SEQLM_ROOT", str(root))
    mp.setenv("XDG_CACHE_HOME", str(root / "cache"))  # the registry's download cache
    mp.chdir(root)
