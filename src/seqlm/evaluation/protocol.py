"""The protocol: how a model reads a split, what it is trained on and how it is scored (decision 23 in
docs/architecture.md).

There are three, chosen once from the configuration (``evaluation.protocols``) and passed to everything
that reads batches:

- ``Streamed`` (``evaluation.streamed``): B parallel streams in windows of ``bptt`` tokens, the state
  carried from window to window (decision 3); scored in bits per byte.
- ``Episodic`` (``evaluation.episodic``, ``train.episodic``): every line an episode from a fresh state,
  B whole lines per batch (decision 22); bits per byte, plus recall at each episode's recall position.
- ``Cloze`` (``evaluation.cloze``, ``train.objective: cloze``): streamed windows, each read on its own,
  with seeded blanks as the only targets (decision 20); scored in bits per blank.

A protocol gives its batches (training's layout and evaluation's), the training loss of a batch, the
per-batch sums that validation and evaluation both add up (one loop per protocol), the name of its score
and the record of the protocol written beside every score. The stages and the LightningModule ask the
protocol and never branch on the mode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqlm.evaluation.metrics import LN2, SUMS, Totals, bits_per_byte, split_metrics

NOT_ONE_TOKEN = (
    "recall accuracy needs every line of the probe to end in one token of its recall alphabet; "
    "set tokenizer.type: char (one token per symbol) for synthetic: sources"
)


class Protocol:
    name = ""
    objective = "next"  # the exported model's objective: what `generate` and the registry accept
    score_name = "bits_per_byte"  # validation reports val_<score_name>, evaluation <score_name>
    scales_lr_by_window = True  # a variable-length window scales the learning rate (AWD-LSTM)
    not_registrable: str | None = None  # why the registry refuses this protocol's models, if it does
    _recall_note = ""  # after the evaluate stage's recall line

    # ------------------------------------------------------------------------------------- layout

    def tags(self, batch_size: int, bptt: int) -> dict:
        """The protocol a score was measured under: metrics.json's ``protocol``, MLflow's eval.protocol.*."""
        raise NotImplementedError

    def batches(
        self,
        tokens: np.ndarray,
        eos_id: int,
        batch_size: int,
        bptt: int,
        where: tuple[str, str],
        rank: int = 0,
        world_size: int = 1,
        train: bool = False,
        variable_bptt: bool = False,
        seed: int = 0,
    ):
        """An iterable of ``(x, y, end)`` batches with ``num_batches()``; ``where`` = (split, limit's key)."""
        from seqlm.data.tokens import StreamWindows

        return StreamWindows(tokens, batch_size, bptt, rank, world_size, variable_bptt, seed)

    def key(self, split: str, index: int, rank: int | None = None) -> list[int] | None:
        """What keys a batch's randomness (cloze blanks); None where nothing is drawn."""
        return None

    # ------------------------------------------------------------------------------------ training

    def training_loss(self, model, batch, carried, key, criterion):
        """(cross-entropy, loss to minimise, state to carry) of one training batch. ``criterion(hidden, y)``
        is training's regularised, chunked loss (AR/TAR, ``train.loss_chunk_mb``) for protocols that use it.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- scoring

    def score(self, model, batch, state, key, symbol_ids=None):
        """(``SUMS`` float64 sums, state to carry) of one batch in eval mode: validation and evaluation both
        add these up."""
        raise NotImplementedError

    def totals(
        self,
        model,
        tokens: np.ndarray,
        eos_id: int,
        batch_size: int,
        bptt: int,
        device,
        split: str,
        symbol_ids=None,
    ) -> Totals:
        """One pass over a split under this protocol: the evaluation's loop (``score`` per batch)."""
        import time

        import torch

        batches = self.batches(tokens, eos_id, batch_size, bptt, (split, "evaluate.bptt"))
        ids = None if symbol_ids is None else torch.as_tensor(symbol_ids, dtype=torch.long, device=device)
        model.eval()
        sums = torch.zeros(SUMS, dtype=torch.float64, device=device)
        start = time.perf_counter()
        with torch.inference_mode():
            state = None
            for i, (x, y, _) in enumerate(batches):
                add, state = self.score(model, (x.to(device), y.to(device)), state, self.key(split, i), ids)
                sums += add
        return Totals.of(sums.tolist(), time.perf_counter() - start)

    def metrics(self, totals: Totals, split: dict, tags: dict, floors: dict | None = None) -> dict:
        """One split's metrics; ``split`` is its meta.json entry, ``floors`` what ``floors`` returned."""
        return split_metrics(totals, split, tags, floors)

    def floors(self, baselines, tokens: np.ndarray, batch_size: int, bptt: int, split: str) -> dict:
        """The n-gram yardsticks' totals on ``tokens`` (``evaluation.ngram.NgramBaselines``)."""
        return baselines.bits(tokens)

    def val_metrics(self, val_loss: float, valid_split: dict, recall: dict | None) -> dict:
        """What a validation reports (MLflow step metrics, reports/train/metrics.json's val_*)."""
        bpb = bits_per_byte(val_loss, valid_split["tokens"], valid_split["bytes"])
        scores = {"val_loss": val_loss, "val_bits_per_byte": bpb}
        return scores | {f"val_recall_{k}": v for k, v in (recall or {}).items()}

    def recall(self, totals: Totals) -> dict | None:
        """Accuracy and bits at the recall positions, where the protocol has them."""
        if not totals.recall_count:
            return None
        n = totals.recall_count
        return {"accuracy": totals.recall_hits / n, "bits": totals.recall_nll / n / LN2}

    # --------------------------------------------------------------------------- the evaluate stage

    diagnostics_skipped: dict[str, str] | None = None  # why the next-token diagnostics do not apply, if so

    def recall_metrics(self, model, tokens, eos_id, symbol_ids, span, batch_size, bptt, device) -> dict:
        """Accuracy, bits and positions at the recall positions of a synthetic probe corpus
        (``evaluation.probes``): a prediction counts when the target is the most likely of the recall
        alphabet, so it measures what the state remembers; {} where the protocol scores no recall."""
        return {}

    def export_info(self) -> dict[str, Any]:
        """What the exported config.json carries beside the network for evaluation to score as trained."""
        return {}

    def summary(self, m: dict) -> str:
        """The evaluate stage's closing lines."""
        word = f"{m['word_perplexity']:.1f}" if m["word_perplexity"] is not None else "overflow"
        lines = [
            f"evaluate: test {m['bits_per_byte']:.4f} bits/byte (unigram {m['unigram_bits_per_byte']:.4f}, "
            f"bigram {m['bigram_bits_per_byte']:.4f}); valid {m['valid']['bits_per_byte']:.4f}",
            f"evaluate: token perplexity {m['token_perplexity']:.2f}, word perplexity {word}, "
            f"top-1 {m['top1_accuracy']:.3f}, top-5 {m['top5_accuracy']:.3f}; "
            f"{m['evaluated_tokens']:,} tokens at {m['eval_tokens_per_s']:,.0f} tokens/s",
        ]
        if "recall_accuracy" in m:
            lines.append(
                f"evaluate: recall accuracy {m['recall_accuracy']:.3f} (chance {m['recall_chance']:.3f}) "
                f"over "
                f"{m['recall_positions']:,} recall positions {m['recall_span']} tokens after what they recall"
                + self._recall_note
            )
        return "\n".join(lines)
