"""Atomic writes: a stage's outputs appear whole or not at all.

Files are written beside their destination and renamed into place (rename is atomic on one
file system); directories are assembled under a temporary name and swapped in at the end. What a
process killed half-way left behind (``.<name>.*.tmp``, ``.<name>.*.old``) is removed by the next write
of the same destination. A write that fails for want of disk space raises one line naming the
destination (docs/architecture.md, decision 11).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqlm.core.errors import DiskFull, disk_full


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes it private (0600); outputs get the usual mode
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException as exc:
        if full := disk_full(exc, dest):
            raise full from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: Path, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``dest``; on success it replaces ``dest``.

    On failure the temporary directory is removed and an existing ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); outputs get the usual mode
        try:
            yield tmp
        except DiskFull as exc:
            if exc.path.is_relative_to(tmp):  # name the output, not the folder that is about to go
                raise DiskFull(exc.reason, dest / exc.path.relative_to(tmp)) from None
            raise
        except BaseException as exc:
            if full := disk_full(exc, dest):
                raise full from None
            raise
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            old.rmdir()
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clear_leftovers(dest: Path) -> None:
    """Remove the temporary files and folders a killed write of ``dest`` left beside it."""
    dest = Path(dest)
    pattern = os.path.join(glob.escape(str(dest.parent)), f".{glob.escape(dest.name)}.*")
    for leftover in glob.glob(pattern):
        if leftover.endswith((".tmp", ".old")):
            remove(Path(leftover))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove(*paths: Path) -> None:
    """Remove stale outputs (files or directories) so a failed stage leaves nothing to trust."""
    for p in paths:
        p = Path(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
