"""``data.source: hf:<dataset>[:<config>]``: a Hugging Face dataset (hub or a local folder) as raw text.

Rows are read lazily in batches, so nothing holds more than a batch of the corpus in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqlm.core.errors import SeqlmError
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
    if not name:
        raise SeqlmError(
            f"{where}: no dataset named; write hf:<dataset>[:<config>], e.g. hf:wikitext:wikitext-2-raw-v1"
        )
    local = root / Path(name).expanduser()  # an absolute name stays absolute
    dataset = _load_hf(str(local) if local.is_dir() else name, config or None, where)
    for split in dataset:
        _check_column(dataset[split], column, split, where)
    ours = {HF_SPLITS[s]: s for s in reversed(list(dataset)) if s in HF_SPLITS}
    first = dataset[ours.get("train", next(iter(dataset)))]
    rows_are_lines = _rows_are_lines(first, column)
    details = {
        "dataset": shown(local, root) if local.is_dir() else name,
        "config": config or None,
        "text_column": column,
        "rows": "lines" if rows_are_lines else "documents",
    }
    if set(ours) == set(SPLITS):
        details["splits"] = {s: ours[s] for s in SPLITS}
        splits = {s: _hf_units(dataset[ours[s]], column, rows_are_lines) for s in SPLITS}
        return Corpus("hf", details, splits=splits)
    # Without all three splits, pool what there is and split it by data.split.
    details["pooled_splits"] = list(dataset)
    parts = [_hf_units(dataset[s], column, rows_are_lines) for s in dataset]
    return Corpus("hf", details, whole=lambda: itertools.chain.from_iterable(p() for p in parts))


def _load_hf(target: str, config: str | None, where: str) -> Any:
    import datasets  # heavy; only hf: sources need it

    try:
        return datasets.load_dataset(target, config)
    except ConnectionError:
        raise SeqlmError(
            f"{where}: cannot reach the Hugging Face hub (offline?) and the dataset is not cached; use the "
            "offline default builtin:kjv or local files with files:<path>"
        ) from None
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise SeqlmError(f"{where}: cannot load the dataset: {message}") from None


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
