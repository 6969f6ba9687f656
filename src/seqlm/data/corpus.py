"""Normalising and splitting a corpus: a resolved source in, data/raw's three split files and manifest out.

``write_splits`` streams a source (``seqlm.data.units``) into the train, valid and test files and counts
them; ``manifest`` describes what was written. The download stage (``seqlm.stages.download``) resolves
the source and calls both.

Text is normalised on the way through: UTF-8, Unicode NFC, control characters (category Cc) removed
except tab and newline, every line break written as ``\\n``. It is streamed: memory holds a line (at
most about a million characters of it) and one byte per document, never the corpus.

Documents. A source hands over units whose end is always a document boundary (a file, a KJV chapter,
a dataset row); inside a unit, a blank (empty or whitespace-only) line ends a document too, so a file
containing blank lines is split into paragraphs. Written documents therefore never hold a blank line;
the split files separate them by exactly one, and reading a file back by paragraphs gives its documents.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from seqlm.config import Config
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import SPLITS, raw_split_name
from seqlm.core.redact import redact_url
from seqlm.data.units import Corpus, Unit, Units

DOC_END = None  # in a stream of text pieces: the current document ends here
MAX_PIECE_CHARS = 1 << 20
# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; tab and newline stay, and
# carriage returns have become newlines before this runs.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# ------------------------------------------------------------------------------------- normalisation


def normalise(chunks: Iterable[str]) -> Iterator[str]:
    """Raw text chunks -> normalised pieces: whole lines ending in ``\\n``, or parts of a long line.

    A line longer than MAX_PIECE_CHARS comes out in several pieces (only the last ends in ``\\n``),
    so a huge single line is streamed rather than held; the last piece always ends the line.
    """
    partial, pending_cr = "", False
    for chunk in chunks:
        if pending_cr:
            chunk = "\r" + chunk
        pending_cr = chunk.endswith("\r")  # maybe the first half of a \r\n split across chunks
        lines = _clean(chunk[:-1] if pending_cr else chunk).split("\n")
        for line in lines[:-1]:
            yield unicodedata.normalize("NFC", partial + line) + "\n"
            partial = ""
        partial += lines[-1]
        while len(partial) > MAX_PIECE_CHARS and (cut := _safe_cut(partial)):
            yield unicodedata.normalize("NFC", partial[:cut])
            partial = partial[cut:]
    if partial or pending_cr:
        yield unicodedata.normalize("NFC", partial) + "\n"


def _clean(text: str) -> str:
    # Line and paragraph separators become newlines so that every reader (file iteration,
    # str.splitlines) sees the same lines; the other Cc line breaks (VT, FF, NEL) are removed.
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    return _CONTROL.sub("", text)


def _safe_cut(text: str) -> int:
    """Where a long line may be cut so that NFC of the parts equals NFC of the whole; 0: nowhere yet.

    An ASCII character is a starter that never composes with what precedes it (UAX #15), so cutting
    before one is exact. Failing that, any starter but a Hangul vowel or trailing consonant jamo:
    exact except for a handful of Indic vowel signs, and only in a line of over a million
    characters without one ASCII character.
    """
    lowest = max(1, len(text) - 65536)
    for i in range(len(text) - 1, lowest - 1, -1):
        if text[i] < "\x80":
            return i
    for i in range(len(text) - 1, lowest - 1, -1):
        if unicodedata.combining(text[i]) == 0 and not "\u1160" <= text[i] <= "\u11ff":
            return i
    return 0  # only combining marks and jamo: keep reading until a starter arrives


def documents(pieces: Iterable[str]) -> Iterator[str | None]:
    """Normalised pieces -> the same pieces with DOC_END after each document; blank lines dropped."""
    in_doc, line_blank, held = False, True, []
    for piece in pieces:
        if line_blank and (not piece or piece.isspace()):
            if piece.endswith("\n"):  # a blank line: the end of a document
                held.clear()
                if in_doc:
                    yield DOC_END
                    in_doc = False
            else:
                held.append(piece)  # whitespace so far; kept only if the line turns out to have text
            continue
        if line_blank:
            yield from held
            held.clear()
            in_doc, line_blank = True, False
        yield piece
        line_blank = piece.endswith("\n")
    if in_doc:
        yield DOC_END


def events(units: Iterable[Unit]) -> Iterator[str | None]:
    """Every unit normalised and cut into documents; a unit's end always ends a document."""
    for unit in units:
        yield from documents(normalise(unit))


# ------------------------------------------------------------------------------------------ splitting


def split_sizes(n: int, fractions: Iterable[float]) -> list[int]:
    """Documents per split: round(f * n) for valid and test (at least 1 each), the rest to train."""
    _, valid, test = (max(1, round(f * n)) for f in fractions)
    while n - valid - test < 1:  # a tiny corpus: rounding up left train nothing
        if valid >= test:
            valid -= 1
        else:
            test -= 1
    return [n - valid - test, valid, test]


def assign_splits(n: int, fractions: Iterable[float], seed: int) -> Any:
    """A seeded permutation of document indices, cut by split_sizes: split index (0, 1, 2) per document."""
    import numpy as np

    train, valid, _ = split_sizes(n, fractions)
    order = np.random.default_rng(seed).permutation(n)
    split_of = np.full(n, 2, dtype=np.uint8)
    split_of[order[:train]] = 0
    split_of[order[train : train + valid]] = 1
    return split_of


class SplitWriter:
    """One split file: documents separated by a blank line, counted and hashed as they are written."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self._sha256 = hashlib.sha256()
        self._in_doc = self._mid_word = False
        self.bytes = self.lines = self.words = self.documents = 0

    def write(self, piece: str) -> None:
        if not self._in_doc:
            if self.documents:
                self._emit("\n")
            self._in_doc, self.documents = True, self.documents + 1
        self._emit(piece)

    def end_document(self) -> None:
        self._in_doc = False

    def _emit(self, text: str) -> None:
        data = text.encode("utf-8")
        self._file.write(data)
        self._sha256.update(data)
        self.bytes += len(data)
        self.lines += text.count("\n")
        words = len(text.split())
        if words and self._mid_word and not text[0].isspace():
            words -= 1  # a word cut across two pieces of a long line counts once
        self.words += words
        self._mid_word = bool(text) and not text[-1].isspace()

    def close(self) -> dict[str, Any]:
        self._file.close()
        return {
            "bytes": self.bytes,
            "lines": self.lines,
            "words": self.words,
            "documents": self.documents,
            "sha256": self._sha256.hexdigest(),
        }


def _route(stream: Iterable[str | None], pick: Callable[[int], SplitWriter]) -> None:
    """Send each document of ``stream`` to the writer ``pick(document index)``."""
    index, writer = 0, None
    for event in stream:
        if event is DOC_END:
            writer.end_document()
            index, writer = index + 1, None
        else:
            writer = writer or pick(index)
            writer.write(event)


def write_splits(corpus: Corpus, cfg: Config, out: Path) -> tuple[dict[str, dict], dict]:
    where = f"data.source {redact_url(cfg.data.source)}"
    writers = {split: SplitWriter(out / raw_split_name(split)) for split in SPLITS}
    try:
        if corpus.splits is not None:
            for split in SPLITS:
                _route(events(corpus.splits[split]()), lambda _, w=writers[split]: w)
            method = {"method": "source"}
        else:
            _route_by_fractions(corpus.whole, writers, cfg, where)
            method = {"method": "fractions", "fractions": list(cfg.data.split), "seed": cfg.base.seed}
    finally:
        stats = {split: writer.close() for split, writer in writers.items()}
    _check_not_empty(stats, where)
    return stats, method


def _route_by_fractions(whole: Units, writers: dict[str, SplitWriter], cfg: Config, where: str) -> None:
    # Two passes over the source: count documents, then write each to its split. Reading twice
    # costs time but keeps memory at one byte per document, whatever the corpus size.
    n = sum(1 for event in events(whole()) if event is DOC_END)
    if n == 0:
        raise SeqlmError(_empty_message(where))
    if n < len(SPLITS):
        raise SeqlmError(
            f"{where}: only {n} document{'s' if n > 1 else ''} after normalisation, but train, valid and "
            "test need one each; add files, separate documents with blank lines, or use a directory "
            "holding train.txt, valid.txt and test.txt"
        )
    split_of = assign_splits(n, cfg.data.split, cfg.base.seed)

    def pick(index: int) -> SplitWriter:
        if index >= n:
            raise SeqlmError(f"{where}: the source changed while it was being read; run the stage again")
        return writers[SPLITS[split_of[index]]]

    _route(events(whole()), pick)


def _empty_message(where: str) -> str:
    return (
        f"{where}: the corpus is empty (nothing but whitespace and control characters after "
        "normalisation); point data.source at text"
    )


def _check_not_empty(stats: dict[str, dict], where: str) -> None:
    empty = [split for split in SPLITS if stats[split]["documents"] == 0]
    if len(empty) == len(SPLITS):
        raise SeqlmError(_empty_message(where))
    if empty:
        raise SeqlmError(
            f"{where}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty (nothing "
            "but whitespace and control characters after normalisation); give every split some text"
        )


# ------------------------------------------------------------------------------------------- outputs


def manifest(cfg: Config, corpus: Corpus, method: dict, stats: dict[str, dict]) -> dict[str, Any]:
    return {
        "source": redact_url(cfg.data.source),  # a presigned token must not be kept
        "kind": corpus.kind,
        "details": corpus.details,
        "license": corpus.license,
        "normalisation": {
            "unicode": "NFC",
            "control_characters": "removed, except tab and newline",
            "line_breaks": "\\n",
            "on_decode_error": cfg.data.on_decode_error,
        },
        "split": method,
        "splits": stats,
    }


def summary(split: str, stats: dict[str, Any]) -> str:
    """``download: train 3.9 MB, 28123 lines, 712k words``"""
    size, words = _human_bytes(stats["bytes"]), _human_count(stats["words"])
    return f"download: {split} {size}, {stats['lines']} lines, {words} words"


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _human_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}k" if n >= 10_000 else str(n)
