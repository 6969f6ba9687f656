"""Atomic outputs: what a killed write leaves beside its output is cleared by the next write of it."""

from __future__ import annotations

import os
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


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_only_this_outputs_leftovers_of_dead_writers_are_cleared(tmp_path):
    gone, alive = dead_pid(), os.getppid()  # the parent of pytest outlives this test
    names = [f".tokens.{gone}.abc.tmp", f".tokens.{gone}.def.old", f".tokenizer.{gone}.ghi.tmp"]
    names += [f".tokens.{alive}.jkl.tmp", ".tokens.keep", "tokens.tmp"]
    for name in names:
        (tmp_path / name).mkdir()
    with atomic.atomic_dir(tmp_path / "tokens"):
        pass
    assert hidden(tmp_path) == [f".tokenizer.{gone}.ghi.tmp", f".tokens.{alive}.jkl.tmp", ".tokens.keep"]
    assert (tmp_path / "tokens.tmp").is_dir()


def test_every_stage_sweeps_the_leftovers_of_dead_writers_as_it_starts(project):
    from seqlm.cli import main

    paths = project.paths()
    gone, alive = dead_pid(), os.getppid()
    planted = {
        paths.raw_dir.parent / f".raw.{gone}.downloadxyz.tmp": False,
        paths.raw_dir.parent / f".tokens.{alive}.abc.tmp": True,  # a write still under way
        paths.models_dir / f".last.ckpt.{gone}.save.tmp": False,
        paths.eval_reports / f".metrics.json.{gone}.q1.tmp": False,
    }
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    assert main(["tokenize"]) != 0  # fails at once (no data/raw), after the sweep
    assert {path: path.exists() for path in planted} == planted


def test_files_get_the_usual_mode_even_when_the_writer_replaces_them(tmp_path):
    import torch

    from seqlm.models.export import save_weights

    save_weights(torch.nn.Linear(2, 2), tmp_path / "best.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "best.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
