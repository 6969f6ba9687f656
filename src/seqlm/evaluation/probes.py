"""Recall probes: how often the model recalls a symbol seen ``span`` tokens earlier (a synthetic corpus).
The loop is the protocol's (``recall_metrics`` of ``evaluation.streamed`` or ``evaluation.episodic``); this
module reads the probe's convention and asks the protocol.

A ``data.source: synthetic:…`` corpus ends every line in one symbol of a small recall alphabet, and
the download manifest records that convention. Accuracy is measured at those positions under the
evaluation's stream layout with the state carried (docs/architecture.md, decisions 3 and 12) here; a model
trained with ``train.episodic`` is scored by its protocol (``evaluation.episodic``), every line an episode.
"""

from __future__ import annotations

import json

import numpy as np

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths


def probe_convention(paths: Paths) -> dict | None:
    """The recall convention of a synthetic probe corpus (``data.source: synthetic:…``), else None."""
    if not paths.manifest.is_file():
        return None
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    return manifest["details"]["recall"] if manifest.get("kind") == "synthetic" else None


def symbol_ids(paths: Paths, recall: dict) -> np.ndarray:
    """The exported tokenizer's id of every recall symbol; one line when one is not a single piece."""
    import sentencepiece as spm

    from seqlm.models import export

    sp = spm.SentencePieceProcessor(model_file=str(paths.model_dir / export.TOKENIZER))
    ids = np.array([sp.piece_to_id(s) for s in recall["symbols"]], dtype=np.int64)
    if (ids == sp.unk_id()).any():
        raise SeqlmError(
            "the tokenizer has no single piece for some of the probe's recall symbols "
            f"{recall['symbols']!r}; set tokenizer.type: char for synthetic: sources"
        )
    return ids


def probe_metrics(paths: Paths, model, tokens: np.ndarray, meta: dict, ev, device, protocol) -> dict:
    """``recall_*`` metrics for a synthetic probe corpus under ``protocol``; {} for text corpora."""
    recall = probe_convention(paths)
    if recall is None:
        return {}
    ids = symbol_ids(paths, recall)
    scores = protocol.recall_metrics(
        model, tokens, meta["eos_id"], ids, recall["span"], ev.batch_size, ev.bptt, device
    )
    if not scores:
        return {}
    return {
        "recall_accuracy": scores["accuracy"],
        "recall_chance": recall["chance"],  # the task's: the best a model without memory scores
        "recall_bits": scores["bits"],
        "recall_positions": scores["positions"],
        "recall_span": recall["span"],
    }
