"""Language-model metrics under the evaluation protocol: one definition of bits per byte, stream totals.

Protocol (docs/architecture.md, decision 3): a split is cut into ``evaluate.batch_size`` parallel
streams, read in windows of ``evaluate.bptt`` tokens, with the state carried across windows over the
whole stream (``StreamWindows``' layout). Sums are accumulated in float64 one window at a time, so
memory does not grow with the split and no logits outlive their window.

The layout predicts every token but the first, less up to ``batch_size - 1`` trailing tokens that do
not fill a stream. Per-byte and per-word numbers therefore use the mean loss over the evaluated tokens
scaled by the split's full token count: ``bits_per_byte = bits_per_token × tokens / bytes`` with
tokens, bytes (UTF-8 of the raw text) and words (whitespace-separated) from meta.json (decision 6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2)


def bits_per_byte(loss: float, tokens: int, bytes_: int) -> float:
    """Bits per UTF-8 byte of text whose ``tokens`` tokens have mean ``loss`` nats each.

    The one definition in seqlm (decision 6): it compares models across tokenizers, since the byte
    count of a text does not depend on how it was cut into tokens.
    """
    return loss / LN2 * tokens / bytes_


@dataclass(frozen=True)
class Totals:
    """What one pass of a protocol adds up (``evaluation.protocol``): validation and evaluation alike."""

    nll: float  # nats, summed over the scored targets
    tokens: int  # targets scored: tokens, or blanks for cloze
    top1: int
    top5: int
    seconds: float
    recall_hits: int = 0  # episodic: at each episode's recall position
    recall_nll: float = 0.0
    recall_count: int = 0

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @classmethod
    def of(cls, sums, seconds: float = 0.0) -> "Totals":
        """From a ``SUMS``-long vector of sums (``window_sums``, then the recall's three)."""
        nll, count, top1, top5, hits, recall_nll, recall_count = (float(v) for v in sums)
        return cls(nll, int(count), int(top1), int(top5), seconds, int(hits), recall_nll, int(recall_count))


SUMS = 7  # nll, targets, top-1 hits, top-5 hits; recall hits, recall nll, recall positions


def window_sums(logits, y):
    """[nll, targets, top-1 hits, top-5 hits, 0, 0, 0] (float64) of scored rows ``logits`` [N, V], ``y`` [N].

    The target is among the k best iff the (k+1)-th largest logit is below its own: one top-6 selection
    gives top-1 and top-5, and ties count against the target (a uniform model scores 0, not 1, top-1
    accuracy). The pad serves vocabularies of under 6 tokens.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    nll = F.cross_entropy(logits, y, reduction="sum")
    best = F.pad(logits.topk(min(6, logits.shape[1]), dim=1).values, (0, 6), value=-math.inf)
    hits = (best[:, [1, 5]] < logits.gather(1, y[:, None])).sum(0)
    count = torch.tensor([float(y.numel())], dtype=torch.float64, device=y.device)
    return torch.cat(
        [nll.double().view(1), count, hits.double(), torch.zeros(3, dtype=torch.float64, device=y.device)]
    )


def stream_windows(stream, bptt: int, reset_every: int | None = None) -> Iterator:
    """Consecutive windows of ``bptt`` columns that also end at every multiple of ``reset_every``."""
    from seqlm.data.tokens import Window

    pos, last = 0, stream.stream_len - 1  # the final column is only ever a target
    while pos < last:
        stop = min(pos + bptt, last)
        if reset_every:
            stop = min(stop, (pos // reset_every + 1) * reset_every)
        yield Window(pos, stop - pos)
        pos = stop


def stream_totals(
    model, tokens: np.ndarray, batch_size: int, bptt: int, device="cpu", reset_every: int | None = None
) -> Totals:
    """Summed NLL and top-1/top-5 hits over ``tokens`` in the stream layout, state carried: the streamed
    protocol's evaluation pass (``evaluation.streamed``).

    With ``reset_every`` = K the state goes back to ``init_state`` whenever the stream column is a
    multiple of K, so no prediction sees more than K tokens of context (the context ablation).
    """
    import torch

    from seqlm.data.tokens import StreamWindows

    stream = StreamWindows(tokens, batch_size, bptt)
    model.eval()
    sums = torch.zeros(SUMS, dtype=torch.float64, device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        state = model.init_state(batch_size, device)
        everyone = torch.ones(batch_size, dtype=torch.bool, device=device)
        for window in stream_windows(stream, bptt, reset_every):
            if reset_every and window.start % reset_every == 0:
                state = model.reset_state(state, everyone)
            x, y = (t.to(device, non_blocking=True) for t in stream.read(window))
            logits, state = model(x, state)
            sums += window_sums(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            del logits  # freed before the next window's forward allocates its own
    return Totals.of(sums.tolist(), time.perf_counter() - start)  # the one host sync


def split_metrics(totals: Totals, split: dict, protocol: dict, baselines: dict | None = None) -> dict:
    """The metrics of one split; ``split`` is its meta.json entry (tokens, bytes, words).

    ``baselines`` (the n-gram floors' total bits on this split) adds their bits per byte when given.
    """
    loss = totals.loss
    bits_per_token = loss / LN2
    total_nll = loss * split["tokens"]  # the mean over evaluated tokens, scaled to the whole split
    metrics = {
        "loss": loss,
        "token_perplexity": _exp(loss),
        "bits_per_token": bits_per_token,
        "bits_per_byte": bits_per_byte(loss, split["tokens"], split["bytes"]),
        "word_perplexity": _exp(total_nll / split["words"]) if split["words"] else None,
        "top1_accuracy": totals.top1 / totals.tokens,
        "top5_accuracy": totals.top5 / totals.tokens,
        "tokens": split["tokens"],
        "evaluated_tokens": totals.tokens,
        "bytes": split["bytes"],
        "words": split["words"],
        "eval_tokens_per_s": totals.tokens / max(totals.seconds, 1e-9),
        "protocol": protocol,
    }
    if baselines is not None:
        metrics["unigram_bits_per_byte"] = baselines["unigram_bits"] / split["bytes"]
        metrics["bigram_bits_per_byte"] = baselines["bigram_bits"] / split["bytes"]
    return metrics


def _exp(x: float) -> float | None:
    try:
        return math.exp(x)
    except OverflowError:
        return None  # JSON has no infinity
