"""Scoring text with a model: `seqlm score` and the pyfunc's ``score`` task.

Two modes, each one of evaluation's definitions (docs/architecture.md, decisions 3, 6 and 22):

* per line (the default): every line on its own, from a fresh state after a line-start eos, its tokens
  and its eos the targets (``registry.lines``): the episodic protocol's reading, line by line. A line's
  bits per byte count its newline, which the eos predicts.
* document (``--document``): the whole text tokenized as the tokenize stage tokenizes a split and read as
  the streamed protocol reads it (``batch_size`` streams, windows of ``bptt`` tokens, state carried);
  on data/raw/test.txt with evaluate.batch_size and evaluate.bptt it is the evaluate stage's test bits
  per byte.

Bits per byte come from the one ``bits_per_byte`` (decision 6). Records are JSON lines written as lines are
scored, so a file of any size streams through; ``--output`` is written atomically (decision 11).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from seqlm.core import atomic
from seqlm.core.errors import SeqlmError
from seqlm.evaluation.metrics import bits_per_byte

STDIN = "-"
LINES_PER_BATCH = 32
WINDOW_TOKENS = 128  # a long line is read in windows this long: bounds the logits in memory, not the score
BATCHES_PER_CHUNK = 16  # lines read ahead and sorted by length, so that a batch pads little


@dataclass(frozen=True)
class LineScore:
    tokens: int  # the line's tokens and its eos: every one a target
    bytes: int  # UTF-8, with the newline the eos stands for
    nll: float  # nats

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll / self.tokens, self.tokens, self.bytes)

    def record(self, line: int) -> dict:
        return {
            "record": "line",
            "line": line,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "log_prob_nats": -self.nll,
            "bits_per_byte": self.bits_per_byte,
        }


class Scorer:
    """An exported next-token model with its tokenizer, scoring texts line by line or as a document."""

    def __init__(self, model, sp, device="cpu"):
        self.model, self.sp, self.device = model.eval(), sp, device

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str | None = None) -> Scorer:
        import torch

        from seqlm.inference.generator import load_exported

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, sp, _ = load_exported(model_dir, device)
        if model.config.get("objective", "next") != "next":
            raise SeqlmError(
                f"{model_dir} holds a cloze model (train.objective: cloze): it scores blanks, not text; "
                "score with a next-token model"
            )
        return cls(model, sp, device)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text as the tokenize stage encodes it: each of its lines followed by eos."""
        lines = [text.removesuffix("\n").split("\n") for text in texts]
        ids = self.sp.encode([line for group in lines for line in group], out_type="numpy", add_eos=True)
        out, at = [], 0
        for group in lines:
            out.append(np.concatenate(ids[at : at + len(group)]))
            at += len(group)
        return out

    def score(
        self,
        texts: Sequence[str],
        byte_counts: Sequence[int] | None = None,
        batch_size: int = LINES_PER_BATCH,
    ) -> list[LineScore]:
        """Each text scored on its own from a fresh state; ``byte_counts`` default to its UTF-8 bytes plus
        the newline that ends it (a text that ends in one counts it once)."""
        from seqlm.registry.lines import line_nll

        if byte_counts is None:
            byte_counts = [len(t.encode("utf-8")) + (not t.endswith("\n")) for t in texts]
        episodes = self.encode(texts)
        order = np.argsort([len(ids) for ids in episodes], kind="stable")
        nll = np.empty(len(episodes))
        for at in range(0, len(order), batch_size):
            rows = order[at : at + batch_size]
            batch = [episodes[r] for r in rows]
            nll[rows] = line_nll(self.model, batch, self.sp.eos_id(), WINDOW_TOKENS, self.device)
        return [LineScore(len(e), int(b), float(n)) for e, b, n in zip(episodes, byte_counts, nll)]

    def score_document(self, path: Path, batch_size: int, bptt: int, progress=None) -> dict:
        """``path`` (UTF-8) under the streamed protocol: the evaluate stage's metrics of a split."""
        import torch

        from seqlm.data.tokenizer import encode_file, token_dtype
        from seqlm.data.tokens import open_tokens
        from seqlm.evaluation.metrics import SUMS, Totals
        from seqlm.evaluation.streamed import Streamed

        protocol = Streamed()
        with tempfile.TemporaryDirectory(prefix="seqlm-score-") as tmp:
            dest, dtype = Path(tmp) / "tokens.bin", token_dtype(self.sp.GetPieceSize())
            stats = encode_file(self.sp, path, dest, dtype)
            if stats.tokens < batch_size + 1:
                raise SeqlmError(
                    f"{path}: {stats.tokens} tokens cannot feed --batch-size {batch_size} streams; "
                    "lower --batch-size or score per line"
                )
            tokens = open_tokens(dest, dtype.name)
            batches = protocol.batches(tokens, self.sp.eos_id(), batch_size, bptt, (str(path), "--bptt"))
            if progress is not None:
                progress.reset(total=batches.num_batches())
            sums = torch.zeros(SUMS, dtype=torch.float64, device=self.device)
            start, state = time.perf_counter(), None
            with torch.inference_mode():  # the streamed protocol's per-window sums, as evaluation adds them
                for x, y, _ in batches:
                    add, state = protocol.score(
                        self.model, (x.to(self.device), y.to(self.device)), state, None
                    )
                    sums += add
                    if progress is not None:
                        progress.update(1)
            totals = Totals.of(sums.tolist(), time.perf_counter() - start)
            del tokens, batches  # the memmap must be closed before its folder goes
        split = {"tokens": stats.tokens, "bytes": stats.bytes, "words": stats.words}
        return protocol.metrics(totals, split, protocol.tags(batch_size, bptt))


# ------------------------------------------------------------------------------------------ input


def read_lines(f: BinaryIO, name: str) -> Iterator[tuple[str, int]]:
    """(line without its newline, its bytes with the newline) of a UTF-8 byte stream, one at a time."""
    offset = 0
    for number, raw in enumerate(f, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SeqlmError(
                f"{name}: not valid UTF-8 at byte {offset + exc.start} (line {number}); "
                "seqlm score reads UTF-8 text: convert the file first (e.g. iconv -t UTF-8)"
            ) from None
        offset += len(raw)
        yield text.removesuffix("\n"), len(raw)


def check_file(path: Path, name: str | None = None) -> int:
    """The size of a readable, non-empty UTF-8 file; checked before any model is loaded."""
    name = name or str(path)
    if not path.is_file():
        raise SeqlmError(f"{name}: no such file; give a text file to score, or - for stdin")
    size = path.stat().st_size
    if size == 0:
        raise SeqlmError(f"{name} is empty; there is nothing to score")
    with path.open("rb") as f:
        for _ in read_lines(f, name):
            pass
    return size


@contextlib.contextmanager
def stdin_copy() -> Iterator[Path]:
    """stdin saved to a temporary file: a document is tokenized from a file, like a split."""
    with tempfile.TemporaryDirectory(prefix="seqlm-score-") as tmp:
        path = Path(tmp) / "stdin.txt"
        with path.open("wb") as f:
            while chunk := sys.stdin.buffer.read(1 << 20):
                f.write(chunk)
        yield path


@contextlib.contextmanager
def output(dest: str | None) -> Iterator[TextIO]:
    """stdout, or ``dest`` written beside itself and renamed into place only when every record is in."""
    if dest in (None, STDIN):
        yield sys.stdout
        return
    with atomic.atomic_path(Path(dest)) as tmp, tmp.open("w", encoding="utf-8") as f:
        yield f


# ------------------------------------------------------------------------------------------ the command


def _write(out: TextIO, record: dict) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _chunks(lines: Iterator[tuple[str, int]], size: int) -> Iterator[list[tuple[str, int]]]:
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_lines(scorer: Scorer, f: BinaryIO, name: str, out: TextIO, batch_size: int, progress) -> dict:
    """Write one record per line of ``f`` as it is scored; the total record, also written last."""
    number, tokens, bytes_, nll = 0, 0, 0, 0.0
    for chunk in _chunks(read_lines(f, name), batch_size * BATCHES_PER_CHUNK):
        texts, sizes = zip(*chunk)
        for score in scorer.score(texts, sizes, batch_size):
            number += 1
            tokens, bytes_, nll = tokens + score.tokens, bytes_ + score.bytes, nll + score.nll
            _write(out, score.record(number))
        out.flush()
        progress.update(sum(sizes))
    if number == 0:
        raise SeqlmError(f"{name} is empty; there is nothing to score")
    total = {
        "record": "total",
        "mode": "line",
        "lines": number,
        "tokens": tokens,
        "bytes": bytes_,
        "log_prob_nats": -nll,
        "bits_per_byte": bits_per_byte(nll / tokens, tokens, bytes_),
    }
    _write(out, total)
    return total


def document_protocol(batch_size: int | None, bptt: int | None) -> tuple[int, int]:
    """The streams and window of a document score: the flags, else the project's evaluate.* settings."""
    from seqlm import config
    from seqlm.core.paths import Paths

    params = Paths.from_env().params
    evaluate = config.load(params).evaluate if params.is_file() else config.EvaluateConfig()
    return batch_size or evaluate.batch_size, bptt or evaluate.bptt


def cli_score(args) -> None:
    from tqdm import tqdm

    from seqlm.registry.resolve import resolve_model_dir

    for flag, value in (("--batch-size", args.batch_size), ("--bptt", args.bptt)):
        if value is not None and value < 1:
            raise SeqlmError(f"{flag} must be a positive integer, got {value}")
    name = "stdin" if args.file == STDIN else args.file
    size = None if args.file == STDIN else check_file(Path(args.file))
    scorer = Scorer.from_dir(resolve_model_dir(args.model))
    bar = tqdm(
        total=size, desc="score", unit="B", unit_scale=True, file=sys.stderr, disable=not sys.stderr.isatty()
    )
    with bar, output(args.output) as out:
        if args.document:
            batch_size, bptt = document_protocol(args.batch_size, args.bptt)
            bar.unit, bar.unit_scale = " windows", False
            with stdin_copy() if args.file == STDIN else contextlib.nullcontext(Path(args.file)) as path:
                if args.file == STDIN:
                    check_file(path, name)
                metrics = scorer.score_document(path, batch_size, bptt, bar)
            _write(out, {"record": "total", "mode": "document"} | metrics)
            how = f"{batch_size} streams, bptt {bptt}, the state carried across lines"
            done = f"{metrics['bytes']:,} bytes: {metrics['bits_per_byte']:.4f} bits/byte ({how})"
        else:
            source = contextlib.nullcontext(sys.stdin.buffer) if args.file == STDIN else open(args.file, "rb")
            with source as f:
                total = score_lines(scorer, f, name, out, args.batch_size or LINES_PER_BATCH, bar)
            done = (
                f"{total['lines']:,} lines, {total['bytes']:,} bytes: {total['bits_per_byte']:.4f} bits/byte "
                "(each line from a fresh state)"
            )
    where = f"; records in {args.output}" if args.output not in (None, STDIN) else ""
    print(f"score: {name}: {done}{where}", file=sys.stderr)
