"""A registered version's score on the current raw text of a split, tokenised by its own tokenizer.

The champion gate compares scores only on the same valid text under the same protocol
(docs/architecture.md, decision 8); a champion scored on other text is re-scored here first.
"""

from __future__ import annotations

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths


def rescore(name: str, version: int, protocol: dict, paths: Paths, split: str = "valid") -> dict:
    """The metrics (``split_metrics``, without n-gram yardsticks) of ``name`` ``version`` on
    data/raw/<split>.txt under ``protocol`` (batch_size, bptt, and episodic when it is set)."""
    import tempfile
    from pathlib import Path

    import sentencepiece as spm
    import torch

    from seqlm.data.tokenizer import encode_file, token_dtype
    from seqlm.data.tokens import open_tokens
    from seqlm.evaluation.metrics import episode_totals, split_metrics, stream_totals
    from seqlm.models import export
    from seqlm.registry.resolve import resolve_model_dir

    model_dir = Path(resolve_model_dir(f"models:/{name}/{version}"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = export.load(model_dir, device)
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / export.TOKENIZER))
    text = paths.raw_split(split)
    with tempfile.TemporaryDirectory(prefix="seqlm-rescore-") as tmp:
        dest, dtype = Path(tmp) / f"{split}.bin", token_dtype(sp.GetPieceSize())
        stats = encode_file(sp, text, dest, dtype)
        tokens = open_tokens(dest, dtype.name)
        if len(tokens) < protocol["batch_size"] + 1:
            raise SeqlmError(
                f"{text}: too short to re-score version {version} with batch size {protocol['batch_size']}"
            )
        if protocol.get("episodic"):  # decision 22: every line an episode from a fresh state
            eos = sp.eos_id()
            totals = episode_totals(
                model, tokens, eos, protocol["batch_size"], protocol["bptt"], device, split
            )
        else:
            totals = stream_totals(model, tokens, protocol["batch_size"], protocol["bptt"], device)
        del tokens  # the memmap must be closed before its folder goes
    split = {"tokens": stats.tokens, "bytes": stats.bytes, "words": stats.words}
    return split_metrics(totals, split, protocol)
