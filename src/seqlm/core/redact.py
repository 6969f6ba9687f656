"""Secrets out of URLs before they are written or printed, and the rule for what counts as one.

A presigned download link carries its token in the query string (``?X-Amz-Signature=…``) and an old
style link its password in the userinfo (``https://user:pass@host/…``); anything written to the
manifest, an error or a progress line would hand them to whoever reads logs or a shared repository.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

# scheme://[userinfo@]host/path[?query][#fragment]. Quotes, angle brackets and whitespace end a URL:
# they cannot appear in one unencoded, and error messages put URLs in quotes. The userinfo runs to the
# last "@" of the URL, so a password holding an unencoded "/", "?", "#" or "@" is hidden whole; a path
# with an "@" in it is hidden with it, which costs a little of the URL and leaks nothing.
_URL = re.compile(
    r"(?P<start>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?P<userinfo><redacted>@|[^\s\"'<>]*@)?"  # <redacted>: redacting twice changes nothing
    r"(?P<rest>[^?#\s\"'<>]*)"
    r"(?P<query>\?<redacted>|\?[^#\s\"'<>]*)?"
)

# Query keys that carry a credential: tokens, signatures (AWS, GCS, Azure SAS `sig`), keys, passwords,
# sessions; the whole key is matched case-insensitively after its separators are dropped.
_CREDENTIAL_KEY = re.compile(
    r"token|sig|secret|passw|pwd|auth(?!or)|credential|session|key$|^key|^x(amz|goog)", re.IGNORECASE
)
REDACTED = "<redacted>"


def redact_url(text: str) -> str:
    """Every URL in ``text`` with its query string as ``?<redacted>`` and its userinfo as ``<redacted>@``.

    ``https://u:p@host/f.txt?sig=abc#part`` -> ``https://<redacted>@host/f.txt?<redacted>#part``; all
    other text is returned unchanged.
    """

    def scrub(match: re.Match[str]) -> str:
        userinfo = f"{REDACTED}@" if match["userinfo"] else ""
        query = f"?{REDACTED}" if match["query"] else ""
        return f"{match['start']}{userinfo}{match['rest']}{query}"

    return _URL.sub(scrub, text)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with URLs redacted and every one of ``secrets`` (as given or %-encoded) replaced."""
    text = redact_url(text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
            text = text.replace(form, REDACTED)
    return text


def credential_key(key: str) -> bool:
    """Whether a query key names a credential (``_CREDENTIAL_KEY``, separators and case ignored)."""
    return _CREDENTIAL_KEY.search(re.sub(r"[^A-Za-z0-9]", "", key)) is not None


def url_credential(url: str) -> str | None:
    """What in ``url`` is a credential, said without repeating it; None when nothing is.

    The rule: any userinfo (``user@`` or ``user:password@``), an authority that is not ``host[:port]``
    (a password with an unencoded ``/`` or ``#`` cuts the URL there), and any query key that names a
    credential (``_CREDENTIAL_KEY``: ``token``, ``access_token``, ``sig``, ``X-Amz-Signature``,
    ``api_key``, ``password``, …).
    """
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        return "a user name or password before the host"
    try:
        parts.port  # noqa: B018 - raises for "user:pass" read as host:port
    except ValueError:
        return "an authority that is not host[:port] (a user:password@ with an unencoded / or # in it?)"
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if credential_key(key):
            # a key without a value may be the secret itself: name it only when it is a name
            return f"the query key {key!r}" if value else "a query key that looks like a credential"
    return None
