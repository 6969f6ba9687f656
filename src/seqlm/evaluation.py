"""The evaluate stage: test and valid metrics under the standard protocol, n-gram yardsticks, diagnostics.

Protocol (DESIGN decision 3): a split is cut into ``evaluate.batch_size`` parallel streams, read in
windows of ``evaluate.bptt`` tokens, with the state carried across windows over the whole stream
(``StreamWindows``' layout). Sums are accumulated in float64 one window at a time, so memory does not
grow with the split and no logits outlive their window.

The layout predicts every token but the first, less up to ``batch_size - 1`` trailing tokens that do
not fill a stream. Per-byte and per-word numbers therefore use the mean loss over the evaluated tokens
scaled by the split's full token count: ``bits_per_byte = bits_per_token × tokens / bytes`` with
tokens, bytes (UTF-8 of the raw text) and words (whitespace-separated) from meta.json (DESIGN decision 6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqlm import io
from seqlm.config import Config
from seqlm.errors import SeqlmError
from seqlm.paths import Paths

LN2 = math.log(2)
# A dense V×V bigram count table up to this many cells (64 MB of int64, V ≤ 2896); sparse beyond.
DENSE_BIGRAM_CELLS = 1 << 23
NGRAM_CHUNK = 1 << 22  # tokens per numpy pass over a memmap


# ------------------------------------------------------------------------------------ stream metrics


@dataclass(frozen=True)
class StreamTotals:
    nll: float  # nats, summed over the evaluated tokens
    tokens: int  # tokens predicted
    top1: int
    top5: int
    seconds: float

    @property
    def loss(self) -> float:
        return self.nll / self.tokens


def stream_windows(stream, bptt: int, reset_every: int | None = None) -> Iterator:
    """Consecutive windows of ``bptt`` columns that also end at every multiple of ``reset_every``."""
    from seqlm.data.datamodule import Window

    pos, last = 0, stream.stream_len - 1  # the final column is only ever a target
    while pos < last:
        stop = min(pos + bptt, last)
        if reset_every:
            stop = min(stop, (pos // reset_every + 1) * reset_every)
        yield Window(pos, stop - pos)
        pos = stop


def stream_totals(model, tokens: np.ndarray, batch_size: int, bptt: int, device="cpu",
                  reset_every: int | None = None) -> StreamTotals:  # fmt: skip
    """Summed NLL and top-1/top-5 hits over ``tokens`` in the stream layout, state carried.

    With ``reset_every`` = K the state goes back to ``init_state`` whenever the stream column is a
    multiple of K, so no prediction sees more than K tokens of context (the context ablation).
    """
    import torch
    import torch.nn.functional as F

    from seqlm.data.datamodule import StreamWindows

    stream = StreamWindows(tokens, batch_size, bptt)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll, top1, top5
    count = 0
    start = time.perf_counter()
    with torch.inference_mode():
        state = model.init_state(batch_size, device)
        everyone = torch.ones(batch_size, dtype=torch.bool, device=device)
        for window in stream_windows(stream, bptt, reset_every):
            if reset_every and window.start % reset_every == 0:
                state = model.reset_state(state, everyone)
            x, y = (t.to(device, non_blocking=True) for t in stream.read(window))
            logits, state = model(x, state)
            logits, y = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
            nll = F.cross_entropy(logits, y, reduction="sum")
            # The target is among the k best iff the (k+1)-th largest logit is below its own: one top-6
            # selection gives top-1 and top-5, and ties count against the target (a uniform model
            # scores 0, not 1, top-1 accuracy). The pad serves vocabularies of under 6 tokens.
            best = F.pad(logits.topk(min(6, logits.shape[1]), dim=1).values, (0, 6), value=-math.inf)
            hits = best[:, [1, 5]] < logits.gather(1, y[:, None])
            sums += torch.cat([nll.double().view(1), hits.sum(0).double()])
            count += y.numel()
            del logits, best  # freed before the next window's forward allocates its own
        nll, top1, top5 = sums.tolist()  # the one host sync
    return StreamTotals(nll, count, int(top1), int(top5), time.perf_counter() - start)


def split_metrics(totals: StreamTotals, split: dict, protocol: dict, baselines: dict | None = None) -> dict:
    """The metrics of one split; ``split`` is its meta.json entry (tokens, bytes, words).

    ``baselines`` (the n-gram floors' total bits on this split) adds their bits per byte when given.
    """
    loss = totals.loss
    bits_per_token = loss / LN2
    total_nll = loss * split["tokens"]  # the mean over evaluated tokens, scaled to the whole split
    return {
        "loss": loss,
        "token_perplexity": _exp(loss),
        "bits_per_token": bits_per_token,
        "bits_per_byte": bits_per_token * split["tokens"] / split["bytes"],
        "word_perplexity": _exp(total_nll / split["words"]) if split["words"] else None,
        "top1_accuracy": totals.top1 / totals.tokens,
        "top5_accuracy": totals.top5 / totals.tokens,
        "tokens": split["tokens"],
        "evaluated_tokens": totals.tokens,
        "bytes": split["bytes"],
        "words": split["words"],
        "eval_tokens_per_s": totals.tokens / max(totals.seconds, 1e-9),
        "protocol": protocol,
    } | ({} if baselines is None else {
        "unigram_bits_per_byte": baselines["unigram_bits"] / split["bytes"],
        "bigram_bits_per_byte": baselines["bigram_bits"] / split["bytes"],
    })  # fmt: skip


def _exp(x: float) -> float | None:
    try:
        return math.exp(x)
    except OverflowError:
        return None  # JSON has no infinity


# ------------------------------------------------------------------------------------- recall probes


def probe_convention(paths: Paths) -> dict | None:
    """The recall convention of a synthetic probe corpus (``data.source: synthetic:…``), else None."""
    import json

    if not paths.manifest.is_file():
        return None
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    return manifest["details"]["recall"] if manifest.get("kind") == "synthetic" else None


def recall_targets(tokens: np.ndarray, eos_id: int, symbol_ids: np.ndarray) -> np.ndarray:
    """Flat positions of the recall targets: the last token of every line (the one before its eos)."""
    tokens = np.asarray(tokens)
    at = np.flatnonzero((tokens[1:] == eos_id) & (tokens[:-1] != eos_id))
    if len(at) == 0 or not np.isin(tokens[at], symbol_ids).all():
        raise SeqlmError(
            "recall accuracy needs every line of the probe to end in one token of its recall alphabet; "
            "set tokenizer.type: char (one token per symbol) for synthetic: sources"
        )
    return at


def recall_metrics(model, tokens: np.ndarray, targets: np.ndarray, symbol_ids: np.ndarray, span: int,
                   batch_size: int, bptt: int, device="cpu") -> dict:  # fmt: skip
    """Accuracy at the recall positions of ``tokens`` in the evaluation's stream layout, state carried.

    A prediction counts when the target is the most likely of the recall alphabet (chance: 1/N), so it
    measures what the state remembers, not whether the model knows a recall comes. Targets less than
    ``span`` columns into a stream are skipped: the symbol to remember lies before that stream's start.
    ``recall_bits`` is the plain (unrestricted) mean −log2 p(target) there.
    """
    import torch
    import torch.nn.functional as F

    from seqlm.data.datamodule import StreamWindows

    stream = StreamWindows(tokens, batch_size, bptt)
    is_target = np.zeros(len(tokens), dtype=np.uint8)
    is_target[targets] = 1
    marks = StreamWindows(is_target, batch_size, bptt)
    ids = torch.as_tensor(symbol_ids, dtype=torch.long, device=device)
    correct = count = 0
    nll = 0.0
    model.eval()
    with torch.inference_mode():
        state = model.init_state(batch_size, device)
        for window in stream_windows(stream, bptt):
            x, y = (t.to(device) for t in stream.read(window))
            logits, state = model(x, state)
            columns = torch.arange(window.start + 1, window.start + 1 + window.length, device=device)
            scored = (marks.read(window)[1].to(device) == 1) & (columns >= span)
            if not scored.any():
                continue
            picked, target = logits[scored].float(), y[scored]
            correct += int((ids[picked[:, ids].argmax(1)] == target).sum())
            nll += float(F.cross_entropy(picked, target, reduction="sum"))
            count += int(target.numel())
    if count == 0:
        raise SeqlmError(
            f"the test split holds no recall position {span} tokens into a stream; use a larger "
            "data.synthetic_symbols or a smaller evaluate.batch_size"
        )
    return {
        "recall_accuracy": correct / count,
        "recall_chance": 1 / len(symbol_ids),
        "recall_bits": nll / count / LN2,
        "recall_positions": count,
        "recall_span": span,
    }


def probe_metrics(paths: Paths, model, tokens: np.ndarray, meta: dict, batch_size: int, bptt: int, device) -> dict:
    """``recall_*`` metrics for a synthetic probe corpus; {} for text corpora."""
    import sentencepiece as spm

    from seqlm.models import export

    recall = probe_convention(paths)
    if recall is None:
        return {}
    sp = spm.SentencePieceProcessor(model_file=str(paths.model_dir / export.TOKENIZER))
    symbol_ids = np.array([sp.piece_to_id(s) for s in recall["symbols"]], dtype=np.int64)
    if (symbol_ids == sp.unk_id()).any():
        raise SeqlmError(
            f"the tokenizer has no single piece for some of the probe's recall symbols {recall['symbols']!r}; "
            "set tokenizer.type: char for synthetic: sources"
        )
    targets = recall_targets(tokens, meta["eos_id"], symbol_ids)
    return recall_metrics(model, tokens, targets, symbol_ids, recall["span"], batch_size, bptt, device)


# ---------------------------------------------------------------------------------- n-gram yardsticks


def _chunks(tokens: np.ndarray, overlap: int = 0) -> Iterator[np.ndarray]:
    """``tokens`` in int64 pieces of NGRAM_CHUNK (+ ``overlap`` tokens shared with the next piece)."""
    for i in range(0, max(len(tokens) - overlap, 0), NGRAM_CHUNK):
        yield np.asarray(tokens[i : i + NGRAM_CHUNK + overlap], dtype=np.int64)


class NgramBaselines:
    """Add-one (Laplace) smoothed unigram and bigram models of the train tokens.

    Counts come from chunked passes over the memmap. Bigram counts live in a dense V×V table when it
    is small (DENSE_BIGRAM_CELLS), else as sorted unique pair codes a·V+b with their counts, merged
    chunk by chunk: memory grows with the distinct pairs seen, never with the corpus.
    """

    def __init__(self, train: np.ndarray, vocab: int):
        self.vocab = vocab
        self.unigram = np.zeros(vocab, dtype=np.int64)
        self.rows = np.zeros(vocab, dtype=np.int64)  # pairs starting with each token
        self.dense = vocab * vocab <= DENSE_BIGRAM_CELLS
        self.pairs = np.zeros(vocab * vocab if self.dense else 0, dtype=np.int64)
        self.codes = np.zeros(0, dtype=np.int64)
        self.unigram[int(train[0])] += 1
        for chunk in _chunks(train, overlap=1):  # every pair once; its second tokens are tokens 1..N-1
            self.unigram += np.bincount(chunk[1:], minlength=vocab)
            self.rows += np.bincount(chunk[:-1], minlength=vocab)
            codes = chunk[:-1] * vocab + chunk[1:]
            if self.dense:
                self.pairs += np.bincount(codes, minlength=vocab * vocab)
            else:
                new, counts = np.unique(codes, return_counts=True)
                merged, where = np.unique(np.concatenate([self.codes, new]), return_inverse=True)
                weights = np.concatenate([self.pairs, counts])
                self.pairs, self.codes = np.bincount(where, weights=weights, minlength=len(merged)), merged
        self.unigram_logp = np.log2((self.unigram + 1) / (self.unigram.sum() + vocab))

    def _pair_counts(self, codes: np.ndarray) -> np.ndarray:
        if self.dense:
            return self.pairs[codes]
        at = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)  # train has ≥ 1 pair
        return np.where(self.codes[at] == codes, self.pairs[at], 0)

    def bits(self, tokens: np.ndarray) -> dict[str, float]:
        """Total bits of ``tokens`` under each model (the bigram's first token falls back to the unigram)."""
        unigram_bits = bigram_bits = float(-self.unigram_logp[int(tokens[0])])
        for chunk in _chunks(tokens, overlap=1):
            unigram_bits -= float(self.unigram_logp[chunk[1:]].sum())
            prev, nxt = chunk[:-1], chunk[1:]
            counts = self._pair_counts(prev * self.vocab + nxt)
            bigram_bits -= float((np.log2(counts + 1.0) - np.log2(self.rows[prev] + float(self.vocab))).sum())
        return {"unigram_bits": unigram_bits, "bigram_bits": bigram_bits}


# ----------------------------------------------------------------------------------------- inputs


def check_inputs(paths: Paths) -> tuple[dict, dict, dict]:
    """run.json, the exported model, meta.json and the raw test text must belong together."""
    import hashlib

    from seqlm import tracking
    from seqlm.data.datamodule import read_meta
    from seqlm.models import export

    run = tracking.read_run_json(paths)
    model_config = export.read_config(paths.model_dir)
    meta = read_meta(paths)
    model_vocab = model_config["model"]["vocab_size"]
    if model_vocab != meta["vocab_size"]:
        raise SeqlmError(
            f"{paths.model_dir} has vocab_size {model_vocab} but {paths.tokens_meta} has vocab_size "
            f"{meta['vocab_size']}: the model was trained on another tokenizer; "
            "re-run train (`dvc repro train`)"
        )
    spm = paths.model_dir / export.TOKENIZER
    sha = meta.get("spm_model_sha256")
    if sha and spm.is_file() and hashlib.sha256(spm.read_bytes()).hexdigest() != sha:
        raise SeqlmError(
            f"{spm} differs from the tokenizer that wrote {paths.tokens_dir}; "
            "re-run train (`dvc repro train`)"
        )
    trained_in = model_config.get("training", {}).get("run_id")
    if trained_in and trained_in != run["run_id"]:
        raise SeqlmError(
            f"{paths.run_json} names run {run['run_id']} but {paths.model_dir} was trained in run "
            f"{trained_in}; re-run train (`dvc repro train`)"
        )
    for split in ("test", "valid"):
        if meta["splits"][split]["tokens"] == 0:
            raise SeqlmError(
                f"{paths.tokens(split)}: the {split} split is empty (0 tokens); put text in "
                f"{paths.raw_split(split)} (or fix data.split) and re-run the pipeline"
            )
    raw, counted = paths.raw_split("test"), meta["splits"]["test"]["bytes"]
    if not raw.is_file() or raw.stat().st_size != counted:
        size = f"{raw.stat().st_size} bytes" if raw.is_file() else "missing"
        raise SeqlmError(f"{raw} is {size} but {paths.tokens_meta} counted {counted}; re-run tokenize")
    return run, model_config, meta


def open_split(paths: Paths, meta: dict, split: str, batch_size: int) -> np.memmap:
    from seqlm.data.datamodule import open_tokens

    tokens = open_tokens(paths.tokens(split), meta["dtype"])
    if len(tokens) < batch_size + 1:
        raise SeqlmError(
            f"{paths.tokens(split)}: {len(tokens)} tokens cannot feed evaluate.batch_size {batch_size} "
            "streams; lower evaluate.batch_size"
        )
    return tokens


def open_run(paths: Paths, run_id: str):
    from seqlm import tracking

    uri = tracking.tracking_uri(paths)
    tracking.check_reachable(uri)
    client = tracking.client(uri)
    try:
        client.get_run(run_id)
    except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        raise SeqlmError(
            f"{paths.run_json}: run {run_id} is not in the MLflow store {uri} ({type(exc).__name__}); "
            "re-run train (`dvc repro -f train`)"
        ) from None
    return client


# ------------------------------------------------------------------------------------------ stage


def run_evaluate(cfg: Config, paths: Paths) -> dict:
    """models/model + data/tokens + data/raw/test.txt → reports/eval/, mirrored into the pipeline's run."""
    import torch

    from seqlm import diagnostics
    from seqlm.models import export

    io.remove(paths.eval_reports)  # stale reports must not outlive a failed evaluation
    run, _, meta = check_inputs(paths)
    ev = cfg.evaluate
    test = open_split(paths, meta, "test", ev.batch_size)
    valid = open_split(paths, meta, "valid", ev.batch_size)
    client = open_run(paths, run["run_id"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = export.load(paths.model_dir, device)

    protocol = {"batch_size": ev.batch_size, "bptt": ev.bptt, "carry_state": True}
    baselines = NgramBaselines(open_split(paths, meta, "train", 1), meta["vocab_size"])
    metrics = {}
    for name, tokens in (("test", test), ("valid", valid)):
        totals = stream_totals(model, tokens, ev.batch_size, ev.bptt, device)
        metrics[name] = split_metrics(totals, meta["splits"][name], protocol, baselines.bits(tokens))
    recall = probe_metrics(paths, model, test, meta, ev.batch_size, ev.bptt, device)
    metrics = metrics["test"] | recall | {"valid": metrics["valid"]}

    with io.atomic_dir(paths.eval_reports) as tmp:
        io.write_json(tmp / "metrics.json", metrics)
        diagnostics.write_all(tmp, model, test, valid, meta, cfg, paths.model_dir, device)
        log_to_mlflow(client, run["run_id"], metrics, tmp)
    _print_summary(metrics)
    return metrics


def log_to_mlflow(client, run_id: str, metrics: dict, reports: Path) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    values = [Metric(f"test_{k}", float(v), now, 0) for k, v in _numeric(metrics).items()]
    values += [Metric(f"valid_{k}", float(v), now, 0) for k, v in _numeric(metrics["valid"]).items()]
    protocol = {f"eval.protocol.{k}": str(v).lower() for k, v in metrics["protocol"].items()}
    # MLflow params are write-once: a re-evaluation with another protocol keeps the first as params;
    # the tags always hold the protocol of the metrics now in the run.
    logged = client.get_run(run_id).data.params
    params = [Param(k, v) for k, v in protocol.items() if k not in logged]
    tags = [RunTag(k, v) for k, v in protocol.items()]
    for i in range(0, len(values), 1000):
        client.log_batch(run_id, metrics=values[i : i + 1000])
    client.log_batch(run_id, params=params, tags=tags)
    client.log_artifacts(run_id, str(reports), artifact_path="eval")


def _numeric(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _print_summary(m: dict) -> None:
    word = f"{m['word_perplexity']:.1f}" if m["word_perplexity"] is not None else "overflow"
    print(
        f"evaluate: test {m['bits_per_byte']:.4f} bits/byte (unigram {m['unigram_bits_per_byte']:.4f}, "
        f"bigram {m['bigram_bits_per_byte']:.4f}); valid {m['valid']['bits_per_byte']:.4f}\n"
        f"evaluate: token perplexity {m['token_perplexity']:.2f}, word perplexity {word}, "
        f"top-1 {m['top1_accuracy']:.3f}, top-5 {m['top5_accuracy']:.3f}; "
        f"{m['evaluated_tokens']:,} tokens at {m['eval_tokens_per_s']:,.0f} tokens/s"
    )
    if "recall_accuracy" in m:
        print(
            f"evaluate: recall accuracy {m['recall_accuracy']:.3f} (chance {m['recall_chance']:.3f}) over "
            f"{m['recall_positions']:,} recall positions {m['recall_span']} tokens after what they recall"
        )
