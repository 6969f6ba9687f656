"""Recall probes: how often the model recalls a symbol seen ``span`` tokens earlier (a synthetic corpus).

A ``data.source: synthetic:…`` corpus ends every line in one symbol of a small recall alphabet, and
the download manifest records that convention. Accuracy is measured at those positions under the
evaluation's stream layout with the state carried (docs/architecture.md, decisions 3 and 12), or, for
a model trained with ``train.episodic``, with every line an episode from a fresh state (decision 22).
"""

from __future__ import annotations

import json

import numpy as np

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.evaluation.metrics import LN2, stream_windows

NOT_ONE_TOKEN = (
    "recall accuracy needs every line of the probe to end in one token of its recall alphabet; "
    "set tokenizer.type: char (one token per symbol) for synthetic: sources"
)


def probe_convention(paths: Paths) -> dict | None:
    """The recall convention of a synthetic probe corpus (``data.source: synthetic:…``), else None."""
    if not paths.manifest.is_file():
        return None
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    return manifest["details"]["recall"] if manifest.get("kind") == "synthetic" else None


def recall_targets(tokens: np.ndarray, eos_id: int, symbol_ids: np.ndarray) -> np.ndarray:
    """Flat positions of the recall targets: the last token of every line (the one before its eos)."""
    tokens = np.asarray(tokens)
    at = np.flatnonzero((tokens[1:] == eos_id) & (tokens[:-1] != eos_id))
    if len(at) == 0 or not np.isin(tokens[at], symbol_ids).all():
        raise SeqlmError(NOT_ONE_TOKEN)
    return at


def recall_metrics(
    model,
    tokens: np.ndarray,
    targets: np.ndarray,
    symbol_ids: np.ndarray,
    span: int,
    batch_size: int,
    bptt: int,
    device="cpu",
) -> dict:
    """Accuracy at the recall positions of ``tokens`` in the evaluation's stream layout, state carried.

    A prediction counts when the target is the most likely of the recall alphabet (chance: 1/N), so it
    measures what the state remembers, not whether the model knows a recall comes. Targets less than
    ``span`` columns into a stream are skipped: the symbol to remember lies before that stream's start.
    ``recall_bits`` is the plain (unrestricted) mean −log2 p(target) there.
    """
    import torch
    import torch.nn.functional as F

    from seqlm.data.tokens import StreamWindows

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


def episodic_recall_metrics(
    model,
    tokens: np.ndarray,
    eos_id: int,
    symbol_ids: np.ndarray,
    chance: float,
    batch_size: int,
    max_len: int,
    device="cpu",
) -> dict:
    """Accuracy at the recall position of every episode (line), each from a fresh state, ``batch_size``
    episodes at a time: nothing is remembered from another line, and every line is scored.

    As in ``recall_metrics``, a prediction counts when the target is the most likely of the recall
    alphabet; ``recall_chance`` is the best a model without memory can score (the task's convention).
    """
    import torch
    import torch.nn.functional as F

    from seqlm.data.episodes import EpisodeBatches, recall_mask

    batches = EpisodeBatches(tokens, eos_id, batch_size, max_len, ("test", "evaluate.bptt"))
    ids = torch.as_tensor(symbol_ids, dtype=torch.long, device=device)
    correct = count = 0
    nll = 0.0
    model.eval()
    with torch.inference_mode():
        for x, y, _ in batches:
            logits, _ = model(x.to(device), None)
            y = y.to(device)
            at = recall_mask(y)
            picked, target = logits[at].float(), y[at]
            if not torch.isin(target, ids).all():
                raise SeqlmError(NOT_ONE_TOKEN)
            correct += int((ids[picked[:, ids].argmax(1)] == target).sum())
            nll += float(F.cross_entropy(picked, target, reduction="sum"))
            count += int(target.numel())
    return {
        "recall_accuracy": correct / count,
        "recall_chance": chance,
        "recall_bits": nll / count / LN2,
        "recall_positions": count,
    }


def probe_metrics(
    paths: Paths,
    model,
    tokens: np.ndarray,
    meta: dict,
    batch_size: int,
    bptt: int,
    device,
    episodic: bool = False,
) -> dict:
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
            "the tokenizer has no single piece for some of the probe's recall symbols "
            f"{recall['symbols']!r}; set tokenizer.type: char for synthetic: sources"
        )
    if episodic:
        scores = episodic_recall_metrics(
            model, tokens, meta["eos_id"], symbol_ids, recall["chance"], batch_size, bptt, device
        )
        return scores | {"recall_span": recall["span"]}
    targets = recall_targets(tokens, meta["eos_id"], symbol_ids)
    scores = recall_metrics(model, tokens, targets, symbol_ids, recall["span"], batch_size, bptt, device)
    return scores | {"recall_chance": recall["chance"]}
