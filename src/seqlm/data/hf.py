"""``data.source: hf:<dataset>[@<revision>][:<config>]``: a Hugging Face dataset (hub or folder) as text.

Rows are read lazily in batches, so nothing holds more than a batch of the corpus in memory.

What was read is recorded in the manifest: for a hub dataset the commit it resolved to (a branch moves, a
commit does not), also when the dataset came from the local cache offline; for a local folder, which has
no commit, each file's SHA-256. ``@<revision>`` pins a hub dataset to a commit, branch or tag; offline,
the cache cannot say which commit a branch or tag is, so only a commit sha that matches the cached copy
is accepted there.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqlm.core.errors import SeqlmError
from seqlm.core.hashing import file_sha256
from seqlm.core.paths import SPLITS
from seqlm.data.units import Corpus, Unit, Units, shown

HF_SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "dev": "valid", "test": "test"}
PEEK_ROWS = 1000


def corpus(spec: str, column: str, root: Path, where: str) -> Corpus:
    """A Hugging Face dataset, with its own splits when it has train, validation and test.

    Rows are written as lines. When the first rows include blank ones (the WikiText layout: a row per
    line, blank rows between paragraphs) and none holds several lines, blank rows end documents;
    otherwise each row is a document (e.g. one story per row).
    """
    name, _, config = spec.partition(":")
    local = root / Path(name).expanduser()  # an absolute name stays absolute
    revision = None
    if not local.is_dir() and "@" in name:
        name, _, revision = name.rpartition("@")
        local = root / Path(name).expanduser()
        if local.is_dir():
            raise SeqlmError(f"{where}: {name} is a local folder, which has no revision; remove @{revision}")
    if not name or revision == "":
        raise SeqlmError(
            f"{where}: no dataset or revision named; write hf:<dataset>[@<revision>][:<config>], "
            "e.g. hf:Salesforce/wikitext@main:wikitext-2-raw-v1"
        )
    dataset, commit = _load_hf(str(local) if local.is_dir() else name, config or None, revision, where)
    for split in dataset:
        _check_column(dataset[split], column, split, where)
    ours = {HF_SPLITS[s]: s for s in reversed(list(dataset)) if s in HF_SPLITS}
    first = dataset[ours.get("train", next(iter(dataset)))]
    rows_are_lines = _rows_are_lines(first, column)
    details = {
        "dataset": shown(local, root) if local.is_dir() else name,
        "config": config or None,
        "revision": revision,
        "commit": commit,
        "text_column": column,
        "rows": "lines" if rows_are_lines else "documents",
    }
    if local.is_dir():
        details["files"] = _folder_files(local, root)
    if set(ours) == set(SPLITS):
        details["splits"] = {s: ours[s] for s in SPLITS}
        splits = {s: _hf_units(dataset[ours[s]], column, rows_are_lines) for s in SPLITS}
        return Corpus("hf", details, splits=splits)
    # Without all three splits, pool what there is and split it by data.split.
    details["pooled_splits"] = list(dataset)
    parts = [_hf_units(dataset[s], column, rows_are_lines) for s in dataset]
    return Corpus("hf", details, whole=lambda: itertools.chain.from_iterable(p() for p in parts))


def _load_hf(target: str, config: str | None, revision: str | None, where: str) -> tuple[Any, str | None]:
    """(the dataset's splits, the hub commit they come from: None for a local folder)."""
    import datasets  # heavy; only hf: sources need it

    try:
        # load_dataset's own three steps, kept apart to read the builder's hash: the resolved commit
        builder = datasets.load_dataset_builder(target, config, revision=revision)
        commit = None if Path(target).is_dir() else _commit(builder, revision, where)
        builder.download_and_prepare()
        return builder.as_dataset(), commit
    except ConnectionError:
        raise SeqlmError(
            f"{where}: cannot reach the Hugging Face hub (offline?) and the dataset is not cached; use the "
            "offline default builtin:kjv or local files with files:<path>"
        ) from None
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise SeqlmError(f"{where}: cannot load the dataset: {message}") from None


def _commit(builder: Any, revision: str | None, where: str) -> str | None:
    """The hub commit ``builder`` reads; offline (datasets' ``Cache`` builder) the cached copy's commit."""
    commit = builder.hash if re.fullmatch(r"[0-9a-f]{40}", str(builder.hash)) else None
    if revision is None or type(builder).__name__ != "Cache":
        return commit
    # Offline, datasets falls back to the latest cached copy whatever revision was asked for.
    if commit is None or not re.fullmatch(r"[0-9a-f]{7,40}", revision) or not commit.startswith(revision):
        cached = f"the cached copy is commit {commit}" if commit else "the cached copy names no commit"
        raise SeqlmError(
            f"{where}: offline, revision {revision} cannot be checked against the cache ({cached}); "
            "go online once, or pin the cached commit if it is the one you want"
        )
    return commit


def _folder_files(folder: Path, root: Path) -> list[dict[str, Any]]:
    """A local dataset's files and their digests: what a hub commit would say, for a folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder)))
    return [{"path": shown(p, root), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _check_column(split: Any, column: str, name: str, where: str) -> None:
    if column not in split.column_names:
        raise SeqlmError(
            f"{where}: split {name} has no column {column!r} (columns: {', '.join(split.column_names)}); "
            "set data.text_column to the one holding the text"
        )
    dtype = getattr(split.features[column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise SeqlmError(
            f"{where}: column {column!r} holds {dtype or split.features[column]}, not text; "
            "set data.text_column"
        )


def _rows(split: Any, column: str) -> Iterator[str]:
    for batch in split.select_columns([column]).iter(batch_size=1024):
        for text in batch[column]:
            yield text or ""  # a missing value is an empty row


def _rows_are_lines(split: Any, column: str) -> bool:
    first = list(itertools.islice(_rows(split, column), PEEK_ROWS))
    multi_line = any("\n" in row.rstrip("\n") for row in first)
    return not multi_line and any(not row.strip() for row in first)


def _hf_units(split: Any, column: str, rows_are_lines: bool) -> Units:
    def units() -> Iterator[Unit]:
        if rows_are_lines:
            yield (row if row.endswith("\n") else row + "\n" for row in _rows(split, column))
        else:
            yield from ((row,) for row in _rows(split, column))

    return units
