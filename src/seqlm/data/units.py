"""The shape of a resolved corpus source: units of raw text, lazily produced, and the Corpus that holds them.

A unit is an iterable of text chunks whose end is always a document boundary (a file, a KJV chapter,
a dataset row). ``sources`` and ``synthetic`` produce Corpus objects; ``corpus`` normalises and
splits them. This module imports nothing from seqlm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Unit = Iterable[str]
Units = Callable[[], Iterator[Unit]]  # called once per pass over the corpus


@dataclass(frozen=True)
class Corpus:
    """A resolved source: either its own train/valid/test splits, or one whole to split by fractions."""

    kind: str
    details: dict[str, Any]
    license: str | None = None
    splits: dict[str, Units] | None = None
    whole: Units | None = None


def shown(path: Path, root: Path) -> str:
    """``path`` as the user wrote it: relative to the project root when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
