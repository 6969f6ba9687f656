"""Test helpers importable from any test module (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


class Project:
    """A throwaway project root: params.yaml copied from the repo, SEQLM_ROOT pointing at it."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copy(REPO / "params.yaml", root / "params.yaml")

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set(self, **overrides) -> None:
        """``set(**{"tokenizer.vocab_size": 64})`` rewrites params.yaml with the given keys."""
        params = self.params
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            params.setdefault(section, {})[key] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def paths(self):
        from seqlm.paths import Paths

        return Paths(self.root)

    def config(self):
        from seqlm import config

        return config.load(self.root / "params.yaml")
