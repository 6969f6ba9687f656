"""Atomic writes: a stage's outputs appear whole or not at all.

Files are written beside their destination and renamed into place (rename is atomic on one
file system); directories are assembled under a temporary name and swapped in at the end. Temporary
names carry the writer's process id (``.<name>.<pid>.<random>.tmp``, ``.old``), so what a process killed
half-way left behind is told apart from a write still under way: the next write of the same
destination, and every stage as it starts (``sweep``), removes the leftovers of processes that are gone.
A write that fails for want of disk space raises one line naming the destination (docs/architecture.md,
decision 11).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqlm.core.errors import DiskFull, disk_full

LEFTOVER = re.compile(r"^\.(?P<name>.+?)\.(?P<pid>\d+)\.[^.]*\.(tmp|old)$")


def temporary_prefix(dest: Path) -> str:
    """``.<name>.<pid>.``: the start of every temporary name beside ``dest`` (see ``clear_leftovers``)."""
    return f".{Path(dest).name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(dest)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(dest), suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes it private (0600), and writers that replace the file (safetensors) do too:
        # outputs get the usual mode
        os.chmod(tmp_path, 0o666 & ~_umask())
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
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(dest), suffix=".tmp", dir=dest.parent))
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
            old = Path(tempfile.mkdtemp(prefix=temporary_prefix(dest), suffix=".old", dir=dest.parent))
            old.rmdir()
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clear_leftovers(dest: Path) -> None:
    """Remove the temporary files and folders that killed writes of ``dest`` left beside it."""
    dest = Path(dest)
    pattern = os.path.join(glob.escape(str(dest.parent)), f".{glob.escape(dest.name)}.*")
    for leftover in map(Path, glob.glob(pattern)):
        found = LEFTOVER.match(leftover.name)
        if found and found["name"] == dest.name and not _alive(int(found["pid"])):
            remove(leftover)


def sweep(*folders: Path) -> list[Path]:
    """Remove every leftover of a dead writer directly inside ``folders``; what was removed.

    A re-run that DVC restores from its run cache writes nothing, so the next write of a destination
    may be far off: every stage sweeps the pipeline's folders as it starts.
    """
    removed = []
    for folder in folders:
        for leftover in Path(folder).glob(".*"):
            found = LEFTOVER.match(leftover.name)
            if found and not _alive(int(found["pid"])):
                remove(leftover)
                removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it now: a write of the same name clears its own
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


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
