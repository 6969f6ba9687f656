"""The project's git state, asked of the ``git`` command: lineage tags and the study's sources."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(root: Path, *args: str) -> str | None:
    """``git <args>`` run in ``root``: its stripped stdout, or None when git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
