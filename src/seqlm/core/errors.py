"""User-facing errors: one line saying what was wrong, where, and what to do next; no traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What libraries that hide the errno say: sqlite, and torch's writer ("file write failed").
DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full")
NEARLY_FULL_BYTES = 1 << 20  # a write that failed with less than this free failed for want of space


class SeqlmError(Exception):
    """A problem the user can fix: bad params, bad input, a missing prerequisite.

    The CLI prints ``error: <message>`` and exits non-zero; anything else escaping is a bug.
    """


class DiskFull(SeqlmError):
    """A write failed because its disk is full: names the file or folder that could not be written."""

    def __init__(self, reason: str, path: Path):
        super().__init__(f"disk full ({reason}) while writing {path}; free space on that disk and run again")
        self.reason, self.path = reason, Path(path)


def disk_full(exc: BaseException, where: Path) -> DiskFull | None:
    """The one-line error for ``exc`` if it was raised because the disk holding ``where`` is full.

    The errno is looked for along the exception's chain; torch's checkpoint writer and safetensors
    drop it, so a failed write with under 1 MiB left on that file system counts too. Call it before
    the failed write's temporary file is removed (that frees the space again).
    """
    if isinstance(exc, SeqlmError):
        return None
    reason = None
    seen = exc
    while seen is not None and reason is None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            reason = seen.strerror or os.strerror(seen.errno)
        elif any(word in str(seen).lower() for word in DISK_FULL_WORDS):
            reason = "no space left on device"
        seen = seen.__cause__ or seen.__context__
    if reason is None and isinstance(exc, Exception) and _free_bytes(where) < NEARLY_FULL_BYTES:
        reason = "under 1 MiB left"
    if reason is None:
        return None
    return DiskFull(reason, where)


def _free_bytes(where: Path) -> int:
    where = Path(where)
    for folder in (where, *where.parents):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        return stat.f_bavail * stat.f_frsize
    return NEARLY_FULL_BYTES
