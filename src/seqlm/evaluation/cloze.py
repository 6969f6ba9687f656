"""Cloze metrics: how well a model fills blanked tokens (decision 20 in docs/architecture.md).

Protocol: the split is cut into ``batch_size`` streams read in windows of ``bptt`` tokens, as for
next-token evaluation, but every window is read on its own from a fresh state (a backward direction
must not carry text from beyond the window). In each window ``cloze_rate`` of every row's positions
are blanked, the blanks drawn from (seed, TEST_KEY or VALID_KEY, window index): every model evaluated
with the same seed, rate and protocol fills the same blanks, so a BiLSTM and a left-to-right LSTM
compare blank for blank. Reported: bits per blanked token, top-1 and top-5 accuracy at the blanks, and
the unigram's bits per blank (what ignoring both sides scores) beside them.
"""

from __future__ import annotations

import math
import time

import numpy as np

from seqlm.evaluation.metrics import LN2, StreamTotals


def cloze_totals(
    model, tokens: np.ndarray, batch_size: int, bptt: int, rate: float, key: list[int], device="cpu"
) -> StreamTotals:
    """Totals over the blanked positions; ``key`` + [window index] keys each window's blanks."""
    import torch
    import torch.nn.functional as F

    from seqlm.data.cloze import IGNORE, blank_batch
    from seqlm.data.tokens import StreamWindows

    stream = StreamWindows(tokens, batch_size, bptt)
    blank_id = model.config["vocab_size"]
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll, top1, top5
    count = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, window in enumerate(stream.windows()):
            x, _ = stream.read(window)
            inputs, targets = blank_batch(x.to(device), rate, [*key, i], blank_id)
            logits, _ = model(inputs, None)
            blanked = targets != IGNORE
            logits, y = logits[blanked].float(), targets[blanked]
            nll = F.cross_entropy(logits, y, reduction="sum")
            # ties count against the target, as in metrics.stream_totals
            best = F.pad(logits.topk(min(6, logits.shape[1]), dim=1).values, (0, 6), value=-math.inf)
            hits = best[:, [1, 5]] < logits.gather(1, y[:, None])
            sums += torch.cat([nll.double().view(1), hits.sum(0).double()])
            count += y.numel()
        nll, top1, top5 = sums.tolist()
    return StreamTotals(nll, count, int(top1), int(top5), time.perf_counter() - start)


def unigram_bits_per_blank(
    unigram_logp: np.ndarray, tokens: np.ndarray, batch_size: int, bptt: int, rate: float, key: list[int]
) -> float:
    """The add-one unigram's mean bits at the same blanks: the score of a model that reads no context."""
    from seqlm.data.cloze import blank_mask
    from seqlm.data.tokens import StreamWindows

    stream = StreamWindows(tokens, batch_size, bptt)
    bits = blanks = 0.0
    for i, window in enumerate(stream.windows()):
        x, _ = stream.read(window)
        mask = blank_mask(x.shape[0], x.shape[1], rate, [*key, i]).numpy()
        bits -= float(unigram_logp[x.numpy()[mask]].sum())
        blanks += int(mask.sum())
    return bits / blanks


def cloze_split_metrics(totals: StreamTotals, split: dict, protocol: dict, unigram_bits: float) -> dict:
    """One split's cloze metrics; ``split`` is its meta.json entry."""
    loss = totals.loss
    return {
        "objective": "cloze",
        "loss": loss,
        "bits_per_blank": loss / LN2,
        "blank_perplexity": math.exp(min(loss, 700.0)),
        "top1_accuracy": totals.top1 / totals.tokens,
        "top5_accuracy": totals.top5 / totals.tokens,
        "unigram_bits_per_blank": unigram_bits,
        "blanks": totals.tokens,
        "tokens": split["tokens"],
        "bytes": split["bytes"],
        "eval_blanks_per_s": totals.tokens / max(totals.seconds, 1e-9),
        "protocol": protocol,
    }


NOT_APPLICABLE = {
    "context_ablation": "The context ablation resets a carried state every K tokens and reads next-token "
    "bits per byte; a cloze model reads each window on its own and is scored on blanks, so it does not "
    "apply.",
    "gradient_flow": "Gradient flow measures d(next-token loss)/d(h_(t-k)) left to right; a cloze model's "
    "loss is at blanks, and a bidirectional one has no single direction, so it does not apply.",
}


def write_not_applicable(out) -> None:
    """The next-token diagnostics' JSON and PNG in ``out``, each saying why a cloze model has none."""
    from seqlm.core import atomic
    from seqlm.evaluation import plots

    for name, reason in NOT_APPLICABLE.items():
        atomic.write_json(out / f"{name}.json", {"objective": "cloze", "skipped": reason, "rows": []})
        plots.plot_not_applicable(name.replace("_", " ").capitalize(), reason, out / f"{name}.png")
