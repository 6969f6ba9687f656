"""The `seqlm` command: pipeline stages and model tools.

Heavy libraries (torch, lightning, mlflow) are imported inside the commands that need them, so
`seqlm --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from seqlm.errors import SeqlmError

# stage name -> "module:function"; each function takes (Config, Paths). The pipeline/ scripts
# and `seqlm <stage>` both come through here, so they run the same code.
STAGES: dict[str, tuple[str, str]] = {
    "download": ("seqlm.data.corpus:run_download", "fetch and normalise the corpus into data/raw/"),
    "tokenize": ("seqlm.data.tokenizer:run_tokenize", "train sentencepiece and write token arrays to data/tokens/"),
    "train": ("seqlm.training:run_train", "train the language model; resumes an interrupted run with the same params"),
}


def _resolve(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(name: str, **options) -> None:
    from seqlm import config
    from seqlm.paths import Paths

    paths = Paths.from_env()
    cfg = config.load(paths.params)
    _resolve(STAGES[name][0])(cfg, paths, **options)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqlm",
        description="Reproducible recurrent language models: download, tokenize, train, evaluate, register.",
        epilog="Run the whole pipeline with `dvc repro` (or `make run`) from the project root.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    stages = {name: sub.add_parser(name, help=f"stage: {text}", description=text) for name, (_, text) in STAGES.items()}
    stages["train"].add_argument("--fresh", action="store_true", help="ignore models/last.ckpt and start over")
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def guarded(fn: Callable[[], None]) -> int:
    """Run ``fn``; user errors become one line on stderr and a non-zero exit code."""
    try:
        fn()
    except SeqlmError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command in STAGES:
        options = {k: v for k, v in vars(args).items() if k != "command"}
        return guarded(lambda: run_stage(args.command, **options))
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


def stage_main(name: str) -> None:
    """Entry point for pipeline/<stage>.py."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(guarded(lambda: run_stage(name)))


if __name__ == "__main__":
    sys.exit(main())
