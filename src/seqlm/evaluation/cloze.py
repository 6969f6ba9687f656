"""The cloze protocol (``train.objective: cloze``, decision 20 in docs/architecture.md): how well a model
fills blanked tokens.

The split is cut into ``batch_size`` streams read in windows of ``bptt`` tokens, as for next-token models,
but every window is read on its own from a fresh state (a backward direction must not carry text from
beyond the window). In each window ``cloze_rate`` of every row's positions are blanked (``data.blanks``),
drawn from a key: (seed, split, rank, step) in training, (seed, split, rank, batch) in validation and
(seed, split, window) in evaluation, so every model evaluated with the same seed, rate and protocol fills
the same blanks and a BiLSTM and a left-to-right LSTM compare blank for blank. Reported: bits per blanked
token, top-1 and top-5 accuracy at the blanks, and the unigram's bits per blank (what ignoring both sides
scores) beside them.
"""

from __future__ import annotations

import math

import numpy as np

from seqlm.evaluation.metrics import LN2, Totals, window_sums
from seqlm.evaluation.protocol import Protocol


def unigram_bits_per_blank(
    unigram_logp: np.ndarray, tokens: np.ndarray, batch_size: int, bptt: int, rate: float, key: list[int]
) -> float:
    """The add-one unigram's mean bits at the same blanks: the score of a model that reads no context."""
    from seqlm.data.blanks import blank_mask
    from seqlm.data.tokens import StreamWindows

    stream = StreamWindows(tokens, batch_size, bptt)
    bits = blanks = 0.0
    for i, window in enumerate(stream.windows()):
        x, _ = stream.read(window)
        mask = blank_mask(x.shape[0], x.shape[1], rate, [*key, i]).numpy()
        bits -= float(unigram_logp[x.numpy()[mask]].sum())
        blanks += int(mask.sum())
    return bits / blanks


def cloze_split_metrics(totals: Totals, split: dict, protocol: dict, unigram_bits: float) -> dict:
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


class Cloze(Protocol):
    name = "cloze"
    objective = "cloze"
    score_name = "bits_per_blank"  # not bits per byte: the registry never compares the two
    not_registrable = (
        "a cloze model (train.objective: cloze) is not registered: the registry's champion gate ranks "
        "next-token models by valid bits per byte and `seqlm serve` generates text, and a cloze model does "
        "neither; use it from its folder: seqlm fill --model models/model"
    )

    diagnostics_skipped = NOT_APPLICABLE

    def __init__(self, rate: float, seed: int):
        self.rate, self.seed = rate, seed

    def tags(self, batch_size: int, bptt: int) -> dict:
        return {
            "objective": "cloze",
            "batch_size": batch_size,
            "bptt": bptt,
            "carry_state": False,
            "cloze_rate": self.rate,
            "seed": self.seed,
        }

    def key(self, split: str, index: int, rank: int | None = None) -> list[int]:
        from seqlm.data.blanks import SPLIT_KEYS

        return [self.seed, SPLIT_KEYS[split], *([] if rank is None else [rank]), index]

    def _blank(self, model, x, key):
        from seqlm.data.blanks import blank_batch

        inputs, targets = blank_batch(x, self.rate, key, model.config["vocab_size"])
        logits, _ = model(inputs, None)
        return logits, targets

    def training_loss(self, model, batch, carried, key, criterion):
        import torch.nn.functional as F

        from seqlm.data.tokens import IGNORE

        logits, targets = self._blank(model, batch[0], key)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        nll = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
        loss = nll / int((targets != IGNORE).sum())
        return loss, loss, None

    def score(self, model, batch, state, key, symbol_ids=None):
        from seqlm.data.tokens import IGNORE

        logits, targets = self._blank(model, batch[0], key)
        blanked = targets != IGNORE
        return window_sums(logits[blanked], targets[blanked]), None

    def floors(self, baselines, tokens, batch_size, bptt, split) -> dict:
        key = self.key(split, 0)[:-1]  # each window appends its index
        return {
            "unigram_bits_per_blank": unigram_bits_per_blank(
                baselines.unigram_logp, tokens, batch_size, bptt, self.rate, key
            )
        }

    def metrics(self, totals: Totals, split: dict, tags: dict, floors: dict | None = None) -> dict:
        return cloze_split_metrics(totals, split, tags, (floors or {}).get("unigram_bits_per_blank"))

    def val_metrics(self, val_loss: float, valid_split: dict, recall: dict | None) -> dict:
        return {"val_loss": val_loss, "val_bits_per_blank": val_loss / LN2}

    def export_info(self) -> dict:
        return {"cloze_rate": self.rate}  # evaluate blanks at the rate trained with

    def summary(self, m: dict) -> str:
        return (
            f"evaluate: cloze, test {m['bits_per_blank']:.4f} bits per blanked token (unigram "
            f"{m['unigram_bits_per_blank']:.4f}), top-1 {m['top1_accuracy']:.3f}, "
            f"top-5 {m['top5_accuracy']:.3f} "
            f"over {m['blanks']:,} blanks; valid {m['valid']['bits_per_blank']:.4f} bits per blank"
        )
