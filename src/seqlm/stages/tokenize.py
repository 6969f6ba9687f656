"""The tokenize stage: data/raw → data/tokenizer/spm.{model,vocab}, data/tokens/{split}.bin + meta.json.

Both folders are written atomically and appear together: the token arrays are encoded while the
sentencepiece model is still in its temporary folder (decision 2 in docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from seqlm.config import Config, TokenizerConfig
from seqlm.core.atomic import atomic_dir, remove, write_json
from seqlm.core.errors import SeqlmError
from seqlm.core.hashing import file_sha256
from seqlm.core.paths import SPLITS, Paths
from seqlm.data import tokenizer
from seqlm.data.tokenizer import SplitStats


def _check_raw(paths: Paths) -> None:
    missing = [paths.raw_split(s) for s in SPLITS if not paths.raw_split(s).is_file()]
    if missing:
        raise SeqlmError(
            f"{missing[0]}: not found; run the download stage first (`dvc repro download`, or `dvc repro` "
            "for the whole pipeline)"
        )


def _meta(sp, model_path: Path, tok: TokenizerConfig, dtype: np.dtype, splits: dict[str, SplitStats]) -> dict:
    return {
        "vocab_size": sp.GetPieceSize(),
        "dtype": dtype.name,
        "unk_id": tokenizer.UNK_ID,
        "bos_id": tokenizer.BOS_ID,
        "eos_id": tokenizer.EOS_ID,
        "pad_id": tokenizer.PAD_ID,
        "tokenizer_type": tok.type,
        "byte_fallback": tok.byte_fallback,
        "line_end": tokenizer.LINE_END,
        "line_end_note": "every line of raw text is followed by eos_id; a blank line is a lone eos",
        "spm_model_sha256": file_sha256(model_path),
        "splits": {
            name: {k: v for k, v in asdict(s).items() if k != "encode_seconds"} for name, s in splits.items()
        },
    }


def _encode_splits(paths: Paths, model_path: Path, tok: TokenizerConfig) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    dtype = tokenizer.token_dtype(sp.GetPieceSize())
    with atomic_dir(paths.tokens_dir) as tmp:
        splits = {
            s: tokenizer.encode_file(sp, paths.raw_split(s), tmp / paths.tokens(s).name, dtype)
            for s in SPLITS
        }
        write_json(tmp / paths.tokens_meta.name, _meta(sp, model_path, tok, dtype, splits))
    for name, s in splits.items():
        if s.tokens == s.lines:
            print(f"tokenize: warning: {paths.raw_split(name)} has no text; later stages need some")
        print(
            f"tokenize: {name:5} {s.tokens:>12,} tokens  {s.tokens / max(s.bytes, 1):.3f} tokens/byte  "
            f"{s.bytes / 1e6 / max(s.encode_seconds, 1e-9):6.1f} MB/s  "
            f"byte-fallback {s.byte_fallback_fraction:.2%}"
        )


def run_tokenize(cfg: Config, paths: Paths) -> None:
    """data/raw/{split}.txt → data/tokenizer/spm.{model,vocab}, data/tokens/{split}.bin + meta.json."""
    remove(paths.tokenizer_dir, paths.tokens_dir)  # stale outputs must not outlive a failed run
    try:
        _check_raw(paths)
        with atomic_dir(paths.tokenizer_dir) as tok_dir:
            tokenizer.train_tokenizer(paths.raw_split("train"), tok_dir, cfg.tokenizer, cfg.base.seed)
            # tokens are encoded with the model still in its temporary folder; both appear together
            _encode_splits(paths, tok_dir / paths.spm_model.name, cfg.tokenizer)
    except BaseException:
        remove(paths.tokenizer_dir, paths.tokens_dir)
        raise
