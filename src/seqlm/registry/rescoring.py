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
    from seqlm.evaluation.protocols import for_record
    from seqlm.models import export
    from seqlm.registry.resolve import resolve_model_dir

    model_dir = Path(resolve_model_dir(f"models:/{name}/{version}"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = export.load(model_dir, device)
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / export.TOKENIZER))
    text = paths.raw_split(split)
    with tempfile.TemporaryDirectory(prefix="seqlm-rescore-") as tmp:
        dest, dtype = Paths(Path(tmp)).tokens(split), token_dtype(sp.GetPieceSize())
        dest.parent.mkdir(parents=True)
        stats = encode_file(sp, text, dest, dtype)
        tokens = open_tokens(dest, dtype.name)
        if len(tokens) < protocol["batch_size"] + 1:
            raise SeqlmError(
                f"{text}: too short to re-score version {version} with batch size {protocol['batch_size']}"
            )
        scored = for_record(protocol)  # streamed, or episodic (decision 22) as the score was measured
        batch_size, bptt = protocol["batch_size"], protocol["bptt"]
        totals = scored.totals(model, tokens, sp.eos_id(), batch_size, bptt, device, split)
        del tokens  # the memmap must be closed before its folder goes
    split = {"tokens": stats.tokens, "bytes": stats.bytes, "words": stats.words}
    return scored.metrics(totals, split, protocol)
