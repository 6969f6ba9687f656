"""Secrets stay out of params.yaml, outputs and messages, and downloads are bounded (decision 18).

Credentials come from the environment (SEQLM_HTTP_TOKEN, SEQLM_URL_QUERY, ~/.netrc or $NETRC) and go
to the source's host alone; an https download never continues over http; the deadline covers the
connection; a gzip cannot inflate past data.max_download_mb; DVC's and git's stores are never a source;
an hf: source records the commit it read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import test_download
import test_mlflow_server
import yaml
from seqlm_testing import REPO
from test_download import Handler, download, expect_failure

from seqlm import cli
from seqlm.core.errors import SeqlmError
from seqlm.data.fetch import fetch_url
from seqlm.tracking.run_record import write_run_json
from seqlm.tracking.store import check_reachable

# test_download's https server on 127.0.0.1 (a self-signed certificate trusted through SSL_CERT_FILE)
certificate, served, hf_cache = test_download.certificate, test_download.served, test_download.hf_cache
# test_mlflow_server's `mlflow server` on 127.0.0.1
tracking_server = test_mlflow_server.tracking_server

SECRET = "s3cr3t"


def corpus_at(project, name: str = "corpus.txt") -> str:
    data = "\n\n".join(f"document {i}" for i in range(10)).encode()
    (project.root / "www" / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ credentials refused


@pytest.mark.parametrize(
    "url,what",
    [
        ("https://alice:s3cr3t@example.invalid/c.txt", "a user name or password before the host"),
        ("https://alice:s3/cr3t@example.invalid/c.txt", "an authority that is not host[:port]"),
        ("https://s3cr3t@example.invalid/c.txt", "a user name or password before the host"),
        ("https://example.invalid/c.txt?token=s3cr3t", "the query key 'token'"),
        ("https://example.invalid/c.txt?v=1&access_token=s3cr3t", "the query key 'access_token'"),
        ("https://example.invalid/c.txt?X-Amz-Signature=s3cr3t", "the query key 'X-Amz-Signature'"),
        ("https://example.invalid/c.txt?sv=2022&sig=s3cr3t", "the query key 'sig'"),
        ("https://example.invalid/c.txt?apiKey=s3cr3t", "the query key 'apiKey'"),
        ("https://example.invalid/c.txt?s3cr3tToken", "a query key that looks like a credential"),
    ],
)
def test_a_credential_in_the_source_is_refused_in_one_line_that_does_not_repeat_it(
    project, capsys, url, what
):
    project.set(**{"data.source": f"url:{url}", "data.sha256": "0" * 64})
    code = cli.main(["download"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1, err
    assert err.startswith('error: params.yaml: data.source must not hold a credential, got "url:https://')
    assert f"with {what}" in err
    assert "~/.netrc" in err and "SEQLM_HTTP_TOKEN" in err and "SEQLM_URL_QUERY" in err
    assert SECRET not in err and "s3/cr3t" not in err
    assert not (project.root / "data").exists()


def test_a_plain_query_is_not_a_credential(project):
    project.set(
        **{"data.source": "url:https://example.invalid/c.txt?file=corpus&v=2", "data.sha256": "0" * 64}
    )
    assert project.config().data.source.endswith("?file=corpus&v=2")


# ------------------------------------------------------------------------ credentials from the env


def test_a_bearer_token_goes_to_the_sources_host_and_nowhere_else(project, served, monkeypatch, capsys):
    sha256 = corpus_at(project)
    monkeypatch.setenv("SEQLM_HTTP_TOKEN", SECRET)
    port = urllib.parse.urlsplit(served).port
    same = urllib.parse.quote(f"{served}/corpus.txt", safe="")
    other = urllib.parse.quote(f"https://localhost:{port}/corpus.txt", safe="")  # same server, other host
    download(project, f"url:{served}/corpus.txt", **{"data.sha256": sha256})
    download(project, f"url:{served}/redirect?to={same}", **{"data.sha256": sha256})
    download(project, f"url:{served}/redirect?to={other}", **{"data.sha256": sha256})
    bearer = f"Bearer {SECRET}"
    assert [auth for _, auth in Handler.seen] == [bearer, bearer, bearer, bearer, None]
    out = capsys.readouterr().out + project.paths().manifest.read_text()
    assert SECRET not in out


def test_a_netrc_login_is_used_for_its_host_and_its_problems_are_one_line(project, served, monkeypatch):
    sha256 = corpus_at(project)
    netrc = project.root / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login alice password {SECRET}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    download(project, f"url:{served}/corpus.txt", **{"data.sha256": sha256})
    assert Handler.seen[-1][1] == "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert SECRET not in project.paths().manifest.read_text()

    message = expect_failure(
        project, f"url:{served}/fail", f"data.source url:{served}/fail: ", **{"data.sha256": sha256}
    )
    assert SECRET not in message and base64.b64encode(f"alice:{SECRET}".encode()).decode() not in message

    netrc.write_text(f"machine 127.0.0.1 login alice password {SECRET} {SECRET}\n")
    message = expect_failure(
        project,
        f"url:{served}/corpus.txt",
        f"data.source url:{served}/corpus.txt: cannot use the netrc file {netrc}: it is malformed at line ",
        **{"data.sha256": sha256},
    )
    assert SECRET not in message
    monkeypatch.setenv("NETRC", str(project.root / "missing"))
    expect_failure(
        project,
        f"url:{served}/corpus.txt",
        f"data.source url:{served}/corpus.txt: NETRC names {project.root / 'missing'}, which does not exist",
        **{"data.sha256": sha256},
    )


# -------------------------------------------------------------------------- every error redacts


@pytest.mark.parametrize(
    "url", ["https://alice:s3cr3t@example.invalid/c.txt", "https://alice:s3/cr3t@127.0.0.1:1/c.txt"]
)
def test_urllibs_own_messages_never_carry_a_password(tmp_path, url):
    """The library below the config check: urllib's "nonnumeric port: 's3cr3t@…'" must not get out."""
    with pytest.raises(SeqlmError) as err:
        fetch_url(url, tmp_path / "f", max_mb=1, minutes=0.05)
    assert SECRET not in str(err.value) and "cr3t" not in str(err.value), str(err.value)
    assert str(err.value).startswith("data.source url:https://<redacted>@")


def test_server_errors_are_scrubbed_of_the_token_and_query(project, served, monkeypatch):
    monkeypatch.setenv("SEQLM_HTTP_TOKEN", f"tok-{SECRET}")
    monkeypatch.setenv("SEQLM_URL_QUERY", f"sig={SECRET}/x+y")
    message = expect_failure(
        project,
        f"url:{served}/fail",
        f"data.source url:{served}/fail: the server answered HTTP 500 ",
        **{"data.sha256": "0" * 64},
    )
    assert Handler.seen == [(f"/fail?sig={SECRET}/x+y", f"Bearer tok-{SECRET}")]  # it did repeat them
    assert SECRET not in message, message


@pytest.mark.parametrize("password", ["pa55word", "pa55/word"])
def test_the_tracking_uri_is_redacted_where_seqlm_prints_or_records_it(tmp_path, password):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    uri = f"http://bob:{password}@127.0.0.1:{port}"
    with pytest.raises(SeqlmError) as err:
        check_reachable(uri, timeout_s=2)
    assert "pa55" not in str(err.value) and "http://<redacted>@127.0.0.1" in str(err.value), str(err.value)

    from seqlm.core.paths import Paths

    paths = Paths(tmp_path)
    paths.models_dir.mkdir()
    write_run_json(paths, "0" * 32, "seqlm", uri)
    assert "pa55" not in paths.run_json.read_text()
    assert json.loads(paths.run_json.read_text())["run_id"] == "0" * 32


# --------------------------------------------------------------------------------------- bounds


@pytest.fixture
def plain_http(tmp_path):
    """A plain-http server on 127.0.0.1 with the same files; yields (base URL, its handler's log)."""
    import functools
    import http.server
    import threading

    hits: list[str] = []

    class Plain(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Plain, directory=str(tmp_path / "www"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_an_https_download_never_follows_a_redirect_to_http(project, served, plain_http, monkeypatch):
    sha256 = corpus_at(project)
    monkeypatch.setenv("SEQLM_HTTP_TOKEN", SECRET)
    base, hits = plain_http
    to = urllib.parse.quote(f"{base}/corpus.txt?sig={SECRET}", safe="")
    message = expect_failure(
        project,
        f"url:{served}/redirect?to={to}",
        f"data.source url:{served}/redirect?<redacted>: the server redirected it to "
        f"{base}/corpus.txt?<redacted>, and an https download is never continued over http; "
        "ask for an https link",
        **{"data.sha256": sha256},
    )
    assert hits == [] and SECRET not in message


def test_a_gzip_bomb_stops_at_max_download_mb_and_writes_nothing(project, served):
    import gzip

    bomb = gzip.compress(b"a" * 5_000_000, mtime=0)  # 5 MB of text in about 5 kB
    (project.root / "www" / "bomb.gz").write_bytes(bomb)
    expect_failure(
        project,
        f"url:{served}/bomb.gz",
        f"{served}/bomb.gz: the file is larger than data.max_download_mb once gunzipped (1 MB: over 1000000 "
        "bytes of text); raise it if expected",
        **{"data.sha256": hashlib.sha256(bomb).hexdigest(), "data.max_download_mb": 1},
    )


@pytest.fixture
def never_accepts():
    """A listening socket nobody accepts on: the kernel completes the TCP handshake, then nothing comes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("where", ["never_accepts", "silent"])
def test_the_deadline_covers_connecting_and_waiting_for_an_answer(project, served, never_accepts, where):
    base = never_accepts if where == "never_accepts" else f"{served}/silent"
    url = f"{base}/c.txt" if where == "never_accepts" else base
    expect_failure(
        project,
        f"url:{url}",
        f"data.source url:{url}: the download did not finish within data.download_timeout_minutes "
        "(0.02; 0 bytes had arrived); raise it for a slow server",
        **{"data.sha256": "0" * 64, "data.download_timeout_minutes": 0.02},
    )


@pytest.mark.parametrize(
    "source,reason",
    [
        ("files:.dvc/cache", ".dvc/cache lies inside .dvc, which holds DVC's cache of earlier outputs"),
        (
            "files:.dvc/cache/files/md5/ab/cdef",
            ".dvc/cache/files/md5/ab/cdef lies inside .dvc, which holds DVC's",
        ),
        ("files:.dvc/**/*", "the pattern reaches .dvc, which holds DVC's cache of earlier outputs"),
        ("files:.git", ".git lies inside .git, which holds git's history"),
        ("files:old", "old lies inside .dvc, which holds DVC's cache of earlier outputs"),  # a link
        ("hf:.dvc/cache", ".dvc/cache lies inside .dvc"),
    ],
)
def test_dvc_and_git_stores_are_never_a_source(project, source, reason):
    cached = project.root / ".dvc" / "cache" / "files" / "md5" / "ab" / "cdef"
    cached.parent.mkdir(parents=True)
    cached.write_text("\n\n".join(f"an old test split, document {i}" for i in range(10)))
    (project.root / ".git").mkdir()
    (project.root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project.root / "old").symlink_to(project.root / ".dvc" / "cache")
    before = {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()}
    with pytest.raises(SeqlmError) as err:
        download(project, source)
    assert str(err.value).startswith(f"data.source {source}: {reason}"), str(err.value)
    assert "\n" not in str(err.value)
    assert {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file()} == before | {
        project.paths().params: project.paths().params.read_bytes()
    }
    assert not (project.root / "data").exists()


def test_a_hidden_store_does_not_stop_a_pattern_that_cannot_reach_it(project):
    (project.root / ".dvc").mkdir()
    (project.root / "corpus").mkdir()
    for i in range(5):
        (project.root / "corpus" / f"{i}.txt").write_text(f"file {i}\n")
    download(project, "files:corpus/*.txt")


# ------------------------------------------------------------------------------------------- hf


def fake_hub_cache(project, commit: str) -> None:
    """What `datasets` leaves in its cache after loading the hub dataset someone/corpus at ``commit``: made
    offline by loading a local folder and filing its prepared splits under the hub name and commit."""
    import datasets

    data = project.root / "made"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"{split} row {i}"}) + "\n" for i in range(3))
        )
    builder = datasets.load_dataset_builder(str(data))
    builder.download_and_prepare()
    cached = Path(datasets.config.HF_DATASETS_CACHE) / "someone___corpus" / "default" / "0.0.0" / commit
    cached.mkdir(parents=True)
    for f in Path(builder.cache_dir).iterdir():
        shutil.copy(f, cached / f.name.replace("made", "corpus"))
    shutil.rmtree(data)


def test_a_cached_hub_dataset_records_its_commit_and_a_pin_must_match_it(project, hf_cache):
    commit = "ab12" * 10
    fake_hub_cache(project, commit)
    manifest = download(project, "hf:someone/corpus")
    assert (manifest["details"]["revision"], manifest["details"]["commit"]) == (None, commit)
    assert "files" not in manifest["details"]
    manifest = download(project, "hf:someone/corpus@ab12ab1")
    assert (manifest["details"]["revision"], manifest["details"]["commit"]) == ("ab12ab1", commit)
    assert manifest["source"] == "hf:someone/corpus@ab12ab1"
    for revision in ("cdcdcdc", "main"):
        expect_failure(
            project,
            f"hf:someone/corpus@{revision}",
            f"data.source hf:someone/corpus@{revision}: offline, revision {revision} cannot be checked "
            f"against the cache (the cached copy is commit {commit}); "
            "go online once, or pin the cached commit",
        )


def test_a_local_dataset_folder_records_its_files_and_takes_no_revision(project, hf_cache):
    data = project.root / "mydata"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text(json.dumps({"text": f"a {split} row"}) + "\n")
    manifest = download(project, "hf:mydata")
    assert (manifest["details"]["revision"], manifest["details"]["commit"]) == (None, None)
    assert manifest["details"]["files"] == [
        {
            "path": f"mydata/{s}.jsonl",
            "bytes": (data / f"{s}.jsonl").stat().st_size,
            "sha256": hashlib.sha256((data / f"{s}.jsonl").read_bytes()).hexdigest(),
        }
        for s in ("test", "train", "validation")
    ]
    expect_failure(
        project,
        "hf:mydata@v1",
        "data.source hf:mydata@v1: mydata is a local folder, which has no revision; remove @v1",
    )


# ----------------------------------------------------------------------------- dvc.lock and MLflow


@pytest.mark.slow
def test_dvc_repro_with_a_credential_in_the_source_writes_nothing_and_dvc_lock_holds_no_secret(
    tmp_path, served
):
    """The real stage under `dvc repro`: refused before anything is written; then the same download with
    its token and signed query in the environment, after which neither dvc.lock nor data/raw holds them."""
    project = tmp_path / "project"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in filter(None, files.stdout.split("\0")):
        if (REPO / name).is_file() and name.split("/")[0] in (
            "src",
            "pipeline",
            ".dvc",
            "dvc.yaml",
            "dvc.lock",
            "params.yaml",
            ".gitignore",
            ".dvcignore",
        ):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQLM_", "NETRC"))}
    env |= {"PYTHONPATH": str(project / "src"), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    git = ["git", "-c", "user.name=seqlm", "-c", "user.email=seqlm@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "the project"], cwd=project, check=True, env=env)
    lock_before = (project / "dvc.lock").read_bytes()
    data = "\n\n".join(f"document {i}" for i in range(10)).encode()
    (tmp_path / "www" / "corpus.txt").write_bytes(data)

    def repro(source: str, extra_env: dict) -> subprocess.CompletedProcess:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["data"] |= {"source": source, "sha256": hashlib.sha256(data).hexdigest()}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dvc = str(Path(sys.executable).parent / "dvc")
        return subprocess.run(
            [dvc, "repro", "download"], cwd=project, env=env | extra_env, capture_output=True, text=True
        )

    refused = repro(f"url:https://alice:{SECRET}@127.0.0.1/corpus.txt?sig={SECRET}", {})
    assert refused.returncode != 0
    assert "data.source must not hold a credential" in refused.stderr + refused.stdout
    assert SECRET not in refused.stderr + refused.stdout
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert not (project / "data").exists()

    secrets = {"SEQLM_HTTP_TOKEN": f"tok-{SECRET}", "SEQLM_URL_QUERY": f"sig={SECRET}"}
    done = repro(f"url:{served}/corpus.txt", secrets)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Handler.seen[-1] == (f"/corpus.txt?sig={SECRET}", f"Bearer tok-{SECRET}")
    assert SECRET not in done.stderr + done.stdout
    written = [
        p for p in project.rglob("*") if p.is_file() and ".git" not in p.relative_to(project).parts[:1]
    ]
    assert project / "dvc.lock" in written and project / "data" / "raw" / "manifest.json" in written
    leaks = [p for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == []


@pytest.mark.slow  # an MLflow server
def test_mlflow_never_prints_a_password_in_the_tracking_uri(tracking_server, capsys, monkeypatch):
    """MLflow prints "View run … at: <tracking URI>/#/…" when a run on a server ends."""
    from seqlm.tracking.store import connect

    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # undone after the test

    uri = tracking_server.replace("http://", "http://bob:pa55word@")
    client = connect(uri)
    run = client.create_run(client.create_experiment("secrets"))
    client.set_terminated(run.info.run_id)
    out = capsys.readouterr().out
    assert "pa55word" not in out
