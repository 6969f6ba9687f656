"""HTTPS downloads for ``data.source: url:…``: streamed to a file, hashed, capped in size and time.

Certificates are checked by Python's default context, which trusts the system store (or the file named
by the standard ``SSL_CERT_FILE``); there is no switch to turn the check off.

Credentials never come from ``data.source`` (the config refuses them: params.yaml is recorded in dvc.lock
and MLflow, decision 18 in docs/architecture.md) but from the environment: a bearer token in
SEQLM_HTTP_TOKEN, else the login that ``~/.netrc`` (or the file ``NETRC`` names) holds for the host, and
SEQLM_URL_QUERY, appended to the query, for a presigned link's signature. The Authorization header goes to
the source's host only: a redirect to another host (a CDN's presigned link) gets none. None of these is
written anywhere, and every error is scrubbed of them and shows the URL redacted (seqlm.core.redact).

Bounds: an https download never follows a redirect to another scheme; one deadline covers connecting, the
TLS handshake, waiting for the answer and every read (name resolution is left to the system resolver's own
timeout); the bytes are capped by ``data.max_download_mb``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import netrc
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from seqlm.core.errors import SeqlmError
from seqlm.core.redact import credential_key, redact_url, scrub

CHUNK_BYTES = 1 << 20
READ_TIMEOUT_S = 60  # the longest one wait may last; data.download_timeout_minutes bounds the whole download
TOKEN_ENV, QUERY_ENV, NETRC_ENV = "SEQLM_HTTP_TOKEN", "SEQLM_URL_QUERY", "NETRC"


class _Refused(Exception):
    """Raised inside urllib's machinery (a redirect, the deadline), reported by ``fetch_url``."""


class _Download:
    """One download's URL, credentials, deadline and the sockets it opened (to bound each read)."""

    def __init__(self, url: str, max_mb: float, minutes: float):
        self.where = f"data.source url:{redact_url(url)}"
        self.max_mb, self.minutes, self.cap = max_mb, minutes, int(max_mb * 1e6)
        self.deadline = time.monotonic() + minutes * 60
        self.url, self.headers, self.secrets = _credentials(url, self.where)
        self.sockets: list = []

    def wait_s(self) -> float:
        """How long the next connect or read may wait: the time left, at most READ_TIMEOUT_S."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Refused(self.late(0))
        return min(READ_TIMEOUT_S, left)

    def expired(self) -> bool:
        return self.deadline - time.monotonic() < 0.5  # a socket timeout set to the time left fires near it

    def late(self, size: int) -> str:
        return (
            f"the download did not finish within data.download_timeout_minutes ({self.minutes:g}; {size} "
            "bytes had arrived); raise it for a slow server"
        )

    def too_big(self, what: str) -> str:
        return (
            f"the file is larger than data.max_download_mb ({self.max_mb:g} MB: {what}); raise it if expected"
        )

    def error(self, text: str) -> SeqlmError:
        return SeqlmError(scrub(f"{self.where}: {text}", self.secrets))


def fetch_url(url: str, dest: Path, max_mb: float, minutes: float) -> tuple[str, int]:
    """Stream ``url`` into ``dest``, stopping past ``max_mb`` megabytes or ``minutes`` in all.

    A failed write (a full disk) escapes as an OSError for the stage to report: it is not the URL's fault.
    """
    download = _Download(url, max_mb, minutes)
    response = _open(download)
    digest, size = hashlib.sha256(), 0
    with response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > download.cap:
            raise download.error(download.too_big(f"the server announces {int(length)} bytes"))
        while True:
            try:
                for sock in download.sockets[-1:]:
                    sock.settimeout(download.wait_s())
                block = response.read1(CHUNK_BYTES)
            except _Refused:
                raise download.error(download.late(size)) from None
            except (http.client.HTTPException, OSError) as exc:
                late = isinstance(exc, TimeoutError) and download.expired()
                raise download.error(download.late(size) if late else _unreachable(exc)) from None
            if not block:
                return digest.hexdigest(), size
            size += len(block)
            if size > download.cap:
                raise download.error(download.too_big(f"over {download.cap} bytes arrived"))
            if time.monotonic() > download.deadline:
                raise download.error(download.late(size))
            digest.update(block)
            out.write(block)


def _open(download: _Download) -> http.client.HTTPResponse:
    request = urllib.request.Request(download.url)
    for name, value in download.headers.items():
        request.add_unredirected_header(name, value)  # urllib drops these on a redirect; see _Redirects
    opener = urllib.request.build_opener(_HTTPS(download), _Redirects(download))
    try:
        return opener.open(request, timeout=download.wait_s())
    except _Refused as exc:
        raise download.error(str(exc)) from None
    except urllib.error.HTTPError as exc:
        raise download.error(f"the server answered HTTP {exc.code} {exc.reason}") from None
    except (http.client.InvalidURL, ValueError):  # urllib's message would repeat the URL, password and all
        raise download.error("it is not a valid URL; check the host and port") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        late = isinstance(reason, TimeoutError) and download.expired()
        raise download.error(download.late(0) if late else _unreachable(exc)) from None


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection whose connect and TLS handshake wait no longer than the download's deadline."""

    def __init__(self, download: _Download, host: str, **kwargs):
        super().__init__(host, **kwargs)
        self.download = download

    def connect(self) -> None:
        self.timeout = self.download.wait_s()
        super().connect()
        self.download.sockets.append(self.sock)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, download: _Download):
        self.context = ssl.create_default_context()
        super().__init__(context=self.context)
        self.download = download

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            lambda host, **kwargs: _Connection(self.download, host, **kwargs), req, context=self.context
        )


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, never from https to another scheme; credentials go back to their own host only."""

    def __init__(self, download: _Download):
        self.download = download

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if old.scheme == "https" and new.scheme != "https":
            fp.close()
            raise _Refused(
                f"the server redirected it to {redact_url(newurl)}, and an https download is never "
                f"continued over {new.scheme or 'another scheme'}; ask for an https link"
            )
        follow = super().redirect_request(req, fp, code, msg, headers, newurl)
        if follow is not None and _origin(old) == _origin(new):
            for name, value in self.download.headers.items():
                follow.add_unredirected_header(name, value)
        return follow


def _origin(parts: urllib.parse.SplitResult) -> tuple:
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


# ---------------------------------------------------------------------------------------- credentials


def _credentials(url: str, where: str) -> tuple[str, dict[str, str], list[str]]:
    """(the URL to fetch, the headers to send its host, every secret in them) from the environment."""
    query = os.environ.get(QUERY_ENV, "").lstrip("?")
    # the signature's values, not X-Amz-Expires=3600 or X-Amz-SignedHeaders=host, which would blot out
    # every "3600" and "host" of a message
    signed = (value for key, value in urllib.parse.parse_qsl(query) if credential_key(key))
    secrets = [query, *signed]
    if query:
        base, _ = urllib.parse.urldefrag(url)
        url = f"{base}{'&' if urllib.parse.urlsplit(base).query else '?'}{query}"
    if token := os.environ.get(TOKEN_ENV, ""):
        return url, {"Authorization": f"Bearer {token}"}, [*secrets, token]
    login = _netrc_login(urllib.parse.urlsplit(url).hostname or "", where)
    if login is None:
        return url, {}, secrets
    basic = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    return url, {"Authorization": f"Basic {basic}"}, [*secrets, login[1], basic]


def _netrc_login(host: str, where: str) -> tuple[str, str] | None:
    """(login, password) for ``host`` from ``$NETRC`` or ``~/.netrc``; None without a file or an entry."""
    named = os.environ.get(NETRC_ENV)
    try:
        entry = netrc.netrc(named).authenticators(host)
    except FileNotFoundError:
        if named:
            raise SeqlmError(
                f"{where}: {NETRC_ENV} names {named}, which does not exist; fix or unset it"
            ) from None
        return None
    except netrc.NetrcParseError as exc:
        # its message may quote a token of the file, which can be a password
        problem = (
            "it is readable by others; chmod 600 it"
            if "permissive" in exc.msg
            else f"it is malformed at line {exc.lineno}; fix it"
        )
        raise SeqlmError(f"{where}: cannot use the netrc file {exc.filename}: {problem}") from None
    if entry is None:
        return None
    login, _, password = entry
    return login or "", password or ""


def _unreachable(exc: BaseException) -> str:
    reason = str(getattr(exc, "reason", None) or exc or type(exc).__name__)
    return f"cannot download it ({reason}); check the URL and the network"
