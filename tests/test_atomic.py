"""Atomic outputs: what a killed write leaves beside its output is cleared by the next write of it."""

from __future__ import annotations

import subprocess
import sys

from seqlm.core import atomic

KILLED_HALF_WAY = """
import os, signal, sys
from pathlib import Path
from seqlm.core import atomic
dest = Path(sys.argv[1])
with atomic.atomic_dir(dest) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    with atomic.atomic_path(dest.parent / "report.json") as part:
        part.write_text("{")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_the_next_write_clears_what_a_kill_9_left(tmp_path):
    dest = tmp_path / "tokens"
    proc = subprocess.run([sys.executable, "-c", KILLED_HALF_WAY, str(dest)], capture_output=True)
    assert proc.returncode == -9
    left = hidden(tmp_path)
    assert [n for n in left if n.startswith(".tokens.")] and [
        n for n in left if n.startswith(".report.json.")
    ]

    with atomic.atomic_dir(dest) as tmp:
        (tmp / "whole.bin").write_bytes(b"y")
    assert [n for n in hidden(tmp_path) if n.startswith(".tokens.")] == []
    atomic.write_json(tmp_path / "report.json", {"whole": True})
    assert hidden(tmp_path) == []
    assert sorted(p.name for p in dest.iterdir()) == ["whole.bin"]


def test_only_this_outputs_leftovers_are_cleared(tmp_path):
    for name in (".tokens.abc.tmp", ".tokens.def.old", ".tokenizer.ghi.tmp", ".tokens.keep", "tokens.tmp"):
        (tmp_path / name).mkdir()
    with atomic.atomic_dir(tmp_path / "tokens"):
        pass
    assert hidden(tmp_path) == [".tokenizer.ghi.tmp", ".tokens.keep"]
    assert (tmp_path / "tokens.tmp").is_dir()
