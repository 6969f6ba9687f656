"""The runtime tokenizer: sentencepiece trained on the train split; text to flat token arrays and back.

Line-end convention ("eos"): a split's token stream is its lines in order, each followed by the eos id
(``</s>``), like the ``<eos>`` of the classic word-level corpora; a blank line (a document break) is a
lone eos, and a last line without a trailing newline gets one too. The model thus learns where lines
and documents end, and generation can emit them. Nothing else is normalised: sentencepiece runs with
the identity normaliser and keeps every space, so ``decode_tokens`` gives back the raw text byte for
byte (the one exception: a literal U+2581 ``▁`` in the text, sentencepiece's own space mark, decodes
as a space). Bytes, words (``str.split()``) and lines in meta.json are counted on the raw text.
Sentencepiece's dummy prefix (a ``▁`` before each line, so that a line's first word is tokenized like
any other) is ``tokenizer.add_dummy_prefix``; without it a line starts with its own first character,
which is what a stream of symbols such as the synthetic probes wants.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from seqlm.config import TokenizerConfig
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import SPM_MODEL

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1  # pad -1: streams are never padded, so no pad piece
CHUNK_BYTES = 1 << 20  # text per encode call: ~8k lines keep every core busy; 4 MB chunks cost 80 MB more RSS
META_PIECES = 3  # <unk>, <s>, </s>
LINE_END = "eos"

# Every code point Python's str.split() treats as whitespace (all lie below U+3001), for count_words.
_UNICODE_SPACES = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[c for c in range(128) if chr(c).isspace()]] = True


@dataclass
class SplitStats:
    tokens: int = 0
    bytes: int = 0
    words: int = 0
    lines: int = 0
    byte_fallback_fraction: float = 0.0
    unk_tokens: int = 0
    encode_seconds: float = 0.0


# ------------------------------------------------------------------------------------------- reading


def _blocks(f: BinaryIO, block_bytes: int, keep_space: bool = False) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(offset, block, line_open)``: runs of whole lines of about ``block_bytes``.

    A line longer than a block is cut at its last space and ``line_open`` says the block ends inside a
    line. That keeps memory bounded for any line length except a run of ``block_bytes`` with no space at
    all, and loses nothing: sentencepiece's pieces never span a space (split_by_whitespace), and the
    space itself is dropped, for the dummy prefix ``▁`` of the next piece to put back, or kept as the
    next block's first byte (``keep_space``, for a model without the dummy prefix). Either way the ids
    are exactly those of the uncut line.
    """
    carry, offset = b"", 0
    while data := f.read(block_bytes):
        data = carry + data
        end = data.rfind(b"\n") + 1
        if end:
            yield offset, data[:end], False
            carry, offset = data[end:], offset + end
            continue
        space = data.rfind(b" ")
        if space > 0:
            yield offset, data[:space], True
            resume = space if keep_space else space + 1
            carry, offset = data[resume:], offset + resume
        else:
            carry = data
    if carry:
        yield offset, carry, False


def _decode(block: bytes, path: Path, offset: int) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SeqlmError(
            f"{path}: not valid UTF-8 at byte {offset + exc.start}; re-run the download stage "
            "(data.on_decode_error: replace turns bad bytes into U+FFFD)"
        ) from None


def _block_lines(text: str, line_open: bool) -> list[str]:
    """The lines of a block; the last one of an open block continues in the next block."""
    lines = text.split("\n")
    if not line_open and text.endswith("\n"):
        lines.pop()
    return lines


def count_words(text: str) -> int:
    """``len(text.split())`` without building the list: word starts counted with numpy."""
    if not text:
        return 0
    if text.isascii():
        space = _ASCII_SPACE[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    else:
        space = np.isin(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32), _UNICODE_SPACES)
    return int(np.count_nonzero(space[:-1] & ~space[1:]) + (not space[0]))


# ------------------------------------------------------------------------------------------ training


def _cut(line: str, max_bytes: int) -> Iterator[str]:
    """Pieces of at most ``max_bytes`` bytes, cut at the last space in reach, else between characters."""
    data = line.encode("utf-8")
    while len(data) > max_bytes:
        cut = data.rfind(b" ", 0, max_bytes + 1)
        if cut > 0:
            yield data[:cut].decode("utf-8")
            data = data[cut + 1 :]
            continue
        cut = max_bytes
        while data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back up to the character's start
            cut -= 1
        yield data[:cut].decode("utf-8")
        data = data[cut:]
    if data:
        yield data.decode("utf-8")


def training_sentences(path: Path, max_bytes: int, counter: dict | None = None) -> Iterator[str]:
    """Non-blank lines of ``path``, those over ``max_bytes`` cut into pieces that fit.

    Sentencepiece silently skips lines longer than its max_sentence_length (and fails outright when
    every line is), so long lines are cut here; ``counter["split_lines"]`` counts the lines cut.
    """
    counter = counter if counter is not None else {}
    counter["split_lines"] = 0
    continued = False  # the first line of this block is the tail of a line _blocks had to cut
    with open(path, "rb") as f:
        for offset, block, line_open in _blocks(f, max(CHUNK_BYTES, 4 * max_bytes)):
            for line in _block_lines(_decode(block, path, offset), line_open):
                # 4 bytes per character at most: the exact byte length is only needed for long lines
                long = len(line) * 4 > max_bytes and len(line.encode("utf-8")) > max_bytes
                if (long or continued) and not line_open:
                    counter["split_lines"] += 1
                continued = line_open
                if line.strip():
                    yield from _cut(line, max_bytes) if long else (line,)


def _sample(sentences: Iterator[str], total: int, keep: int, seed: int) -> Iterator[str]:
    """Exactly ``keep`` of ``total`` sentences, uniformly, in order (selection sampling, TAOCP 3.4.2 S).

    Done here rather than by sentencepiece: its own sampling ignores set_random_generator_seed in
    0.2.x (we measured a different vocabulary on every run), and this needs no memory beyond the sample.
    """
    rng = random.Random(seed)
    for seen, sentence in enumerate(sentences):
        if keep == 0:
            return
        if rng.random() * (total - seen) < keep:
            keep -= 1
            yield sentence


def _cpu_count() -> int:
    # the cores this process may run on (a container or taskset can allow fewer than the machine has)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _trainer_options(tok: TokenizerConfig, model_prefix: Path) -> dict:
    return dict(
        model_prefix=str(model_prefix),
        model_type=tok.type,
        vocab_size=tok.vocab_size,
        # char: the vocabulary is the characters seen (+ bytes), which may be fewer than vocab_size
        hard_vocab_limit=tok.type != "char",
        character_coverage=tok.character_coverage,
        byte_fallback=tok.byte_fallback,
        input_sentence_size=0,  # already sampled by _sample, reproducibly
        max_sentence_length=tok.max_sentence_length,
        normalization_rule_name="identity",  # lossless: bits per byte are measured on the raw bytes
        remove_extra_whitespaces=False,
        add_dummy_prefix=tok.add_dummy_prefix,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        num_threads=_cpu_count(),
        minloglevel=2,
    )


def _smallest_char_vocab(tok: TokenizerConfig) -> int:
    return META_PIECES + (256 if tok.byte_fallback else 0) + 1


def _explain(exc: RuntimeError, tok: TokenizerConfig) -> SeqlmError:
    """Sentencepiece's CHECK failures, as one line that says which param to change and to what."""
    message = str(exc)
    if m := re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message):
        return SeqlmError(
            f"params.yaml: tokenizer.vocab_size {tok.vocab_size} is too large for this corpus: the largest "
            f"it supports is {m.group(1)}; lower tokenizer.vocab_size"
        )
    if m := re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message):
        return SeqlmError(
            f"params.yaml: tokenizer.vocab_size {tok.vocab_size} is too small for this corpus: the smallest "
            f"it supports is {m.group(1)} (every character kept by character_coverage, the byte pieces and "
            "<unk> <s> </s>); raise tokenizer.vocab_size or lower tokenizer.character_coverage"
        )
    return SeqlmError(f"sentencepiece could not train a {tok.type} tokenizer with these params: {message}")


def _model_proto(data: bytes):
    """A serialized sentencepiece model, parsed: its trainer and normalizer specs."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    return proto


def _drop_run_details(model_path: Path) -> None:
    """Clear the temporary model_prefix and the thread count from the model's trainer spec.

    They describe the run, not the model; left in, the same corpus and params would give a different
    spm.model (and sha256) on every run and every machine.
    """
    proto = _model_proto(model_path.read_bytes())
    proto.trainer_spec.ClearField("model_prefix")
    proto.trainer_spec.ClearField("num_threads")
    model_path.write_bytes(proto.SerializeToString())


def train_tokenizer(train_txt: Path, out_dir: Path, tok: TokenizerConfig, seed: int) -> None:
    """Train sentencepiece on ``train_txt``; write ``out_dir/spm.model`` and ``spm.vocab``."""
    import sentencepiece as spm

    if tok.type == "char" and tok.vocab_size < _smallest_char_vocab(tok):
        raise SeqlmError(
            f"params.yaml: tokenizer.vocab_size {tok.vocab_size} is too small for tokenizer.type char with "
            f"byte_fallback {str(tok.byte_fallback).lower()}: the smallest it supports is "
            f"{_smallest_char_vocab(tok)} (256 byte pieces, <unk> <s> </s> and one character)"
        )
    counter: dict = {}
    total = sum(1 for _ in training_sentences(train_txt, tok.max_sentence_length, counter))
    if total == 0:
        raise SeqlmError(f"{train_txt}: the train split has no text; check data.source and data.split")
    keep = total if tok.input_sentence_size == 0 else min(total, tok.input_sentence_size)
    sentences = _sample(training_sentences(train_txt, tok.max_sentence_length), total, keep, seed)
    spm.set_random_generator_seed(seed)  # training is deterministic given its input today; cheap insurance
    options = _trainer_options(tok, model_prefix=(out_dir / SPM_MODEL).with_suffix(""))
    started = time.perf_counter()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences, **options)
    except RuntimeError as exc:
        raise _explain(exc, tok) from None
    _drop_run_details(out_dir / SPM_MODEL)
    if counter["split_lines"]:
        print(
            f"tokenize: {counter['split_lines']:,} train lines longer than tokenizer.max_sentence_length "
            f"({tok.max_sentence_length} bytes) were split (at spaces where possible) for tokenizer training"
        )
    seconds = time.perf_counter() - started
    print(f"tokenize: trained {tok.type} on {keep:,} of {total:,} train sentences in {seconds:.1f} s")


# ------------------------------------------------------------------------------------------ encoding


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 while every id fits (vocab ≤ 65 535), else uint32.

    Decision 2 in docs/architecture.md: flat token arrays, half the bytes for the usual vocabularies.
    """
    return np.dtype("<u2") if vocab_size <= 65_535 else np.dtype("<u4")


def has_dummy_prefix(sp) -> bool:
    """Whether the model puts ``▁`` before a line's first piece (``tokenizer.add_dummy_prefix``)."""
    return _model_proto(sp.serialized_model_proto()).normalizer_spec.add_dummy_prefix


def _encoded_chunks(sp, src: Path, chunk_bytes: int, threads: int) -> Iterator[tuple[np.ndarray, int, int]]:
    """``(ids, lines, words)`` for each chunk of ``src``, in order.

    Sentencepiece encodes chunk i on its C++ threads (without the GIL) while this thread reads, decodes
    and counts chunk i+1 and the caller writes chunk i-1, so the Python work hides behind the encoding.
    """

    def encode(lines: list[str], line_open: bool) -> np.ndarray:
        ids = sp.encode(lines, out_type="numpy", add_eos=True, num_threads=threads)
        if line_open:  # the line goes on in the next chunk: its eos comes there
            ids[-1] = ids[-1][:-1]
        return np.concatenate(ids)

    with open(src, "rb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for offset, block, line_open in _blocks(f, chunk_bytes, keep_space=not has_dummy_prefix(sp)):
            text = _decode(block, src, offset)
            lines = _block_lines(text, line_open)
            encoding = pool.submit(encode, lines, line_open)
            counts = (len(lines) - line_open, count_words(text))
            if pending:
                yield pending[0].result(), *pending[1]
            pending = (encoding, counts)
        if pending:
            yield pending[0].result(), *pending[1]


def encode_file(
    sp, src: Path, dest: Path, dtype: np.dtype, chunk_bytes: int = CHUNK_BYTES, num_threads: int | None = None
) -> SplitStats:
    """Encode ``src`` under the line-end convention into the flat array ``dest``, ``chunk_bytes`` at a time.

    Memory holds a few chunks whatever the file's size; ``num_threads`` defaults to every core.
    """
    is_byte = np.array([sp.IsByte(i) for i in range(sp.GetPieceSize())], dtype=bool)
    stats, byte_pieces = SplitStats(bytes=src.stat().st_size), 0
    started = time.perf_counter()
    with open(dest, "wb") as out:
        for ids, lines, words in _encoded_chunks(sp, src, chunk_bytes, num_threads or _cpu_count()):
            ids.astype(dtype).tofile(out)
            stats.tokens += ids.size
            stats.lines += lines
            stats.words += words
            stats.unk_tokens += int(np.count_nonzero(ids == UNK_ID))
            byte_pieces += int(np.count_nonzero(is_byte[ids]))
    stats.encode_seconds = time.perf_counter() - started
    stats.byte_fallback_fraction = byte_pieces / max(stats.tokens, 1)
    return stats


def decode_tokens(sp, ids: Sequence[int] | np.ndarray) -> str:
    """Text of a token stream under the line-end convention: every eos becomes a newline.

    Lines are decoded one by one because sentencepiece strips the dummy-prefix space only at the start
    of what it decodes.
    """
    ids = np.asarray(ids)
    lines = np.split(ids, np.flatnonzero(ids == sp.eos_id()) + 1)
    return "\n".join(sp.decode([line.tolist() for line in lines]))
