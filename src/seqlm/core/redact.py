"""Secrets out of URLs before they are written or printed.

A presigned download link carries its token in the query string (``?X-Amz-Signature=…``) and an old
style link its password in the userinfo (``https://user:pass@host/…``); anything written to the
manifest, an error or a progress line would hand them to whoever reads logs or a shared repository.
"""

from __future__ import annotations

import re

# scheme://[userinfo@]host/path[?query][#fragment]. Quotes, angle brackets and whitespace end a URL:
# they cannot appear in one unencoded, and error messages put URLs in quotes.
_URL = re.compile(
    r"(?P<start>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?P<userinfo>[^/?#\s\"'<>]*@)?"
    r"(?P<rest>[^?#\s\"'<>]*)"
    r"(?P<query>\?[^#\s\"'<>]*)?"
)


def redact_url(text: str) -> str:
    """Every URL in ``text`` with its query string as ``?<redacted>`` and its userinfo as ``<redacted>@``.

    ``https://u:p@host/f.txt?sig=abc#part`` -> ``https://<redacted>@host/f.txt?<redacted>#part``; all
    other text is returned unchanged.
    """

    def scrub(match: re.Match[str]) -> str:
        userinfo = "<redacted>@" if match["userinfo"] else ""
        query = "?<redacted>" if match["query"] else ""
        return f"{match['start']}{userinfo}{match['rest']}{query}"

    return _URL.sub(scrub, text)
