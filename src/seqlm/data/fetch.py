"""HTTPS downloads for ``data.source: url:…``: streamed to a file, hashed, capped in size and time.

Certificates are checked by Python's default context, which trusts the system store (or the file named
by the standard ``SSL_CERT_FILE``); there is no switch to turn the check off. Errors name the URL only
redacted (seqlm.core.redact), so a presigned token never reaches a log.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

from seqlm.core.errors import SeqlmError
from seqlm.core.redact import redact_url

CHUNK_BYTES = 1 << 20
READ_TIMEOUT_S = 60  # the longest one read may wait; data.download_timeout_minutes bounds the whole download


def fetch_url(url: str, dest: Path, max_mb: float, minutes: float) -> tuple[str, int]:
    """Stream ``url`` into ``dest``, stopping past ``max_mb`` megabytes or ``minutes`` in all.

    A read waits at most READ_TIMEOUT_S and returns what has arrived, and the deadline is checked after
    each, so a server trickling bytes cannot hold the stage for ever (a stalled one may overrun the
    deadline by one read timeout). A failed write (a full disk) escapes as an OSError for the stage to
    report: it is not the URL's fault.
    """
    where, cap, seconds = f"data.source url:{redact_url(url)}", int(max_mb * 1e6), minutes * 60
    deadline, digest, size = time.monotonic() + seconds, hashlib.sha256(), 0
    try:
        response = urllib.request.urlopen(url, timeout=READ_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise SeqlmError(f"{where}: the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise SeqlmError(_unreachable(where, exc)) from None
    with response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            raise SeqlmError(_too_big(where, max_mb, f"the server announces {int(length)} bytes"))
        while True:
            try:
                block = response.read1(CHUNK_BYTES)
            except (http.client.HTTPException, OSError) as exc:
                raise SeqlmError(_unreachable(where, exc)) from None
            if not block:
                return digest.hexdigest(), size
            size += len(block)
            if size > cap:
                raise SeqlmError(_too_big(where, max_mb, f"over {cap} bytes arrived"))
            if time.monotonic() > deadline:
                raise SeqlmError(
                    f"{where}: the download did not finish within data.download_timeout_minutes "
                    f"({minutes:g}; {size} bytes had arrived); raise it for a slow server"
                )
            digest.update(block)
            out.write(block)


def _too_big(where: str, max_mb: float, what: str) -> str:
    return (
        f"{where}: the file is larger than data.max_download_mb ({max_mb:g} MB: {what}); raise it if expected"
    )


def _unreachable(where: str, exc: BaseException) -> str:
    reason = redact_url(str(getattr(exc, "reason", None) or exc or type(exc).__name__))
    return f"{where}: cannot download it ({reason}); check the URL and the network"
