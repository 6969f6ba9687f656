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
from pathlib import Path

from seqlm.core.errors import SeqlmError, disk_full
from seqlm.core.paths import Paths

# stage name -> "module:function"; each function takes (Config, Paths). The pipeline/ scripts
# and `seqlm <stage>` both come through here, so they run the same code.
STAGES: dict[str, tuple[str, str]] = {
    "download": ("seqlm.stages.download:run_download", "fetch and normalise the corpus into data/raw/"),
    "tokenize": (
        "seqlm.stages.tokenize:run_tokenize",
        "train sentencepiece and write token arrays to data/tokens/",
    ),
    "train": (
        "seqlm.stages.train:run_train",
        "train the language model; resumes an interrupted run with the same params",
    ),
    "evaluate": (
        "seqlm.stages.evaluate:run_evaluate",
        "test metrics, diagnostics and samples into reports/eval/",
    ),
    "register": (
        "seqlm.stages.register:run_register",
        "register the model in MLflow and apply the champion gate",
    ),
}

# tool name -> "module:function"; each function takes the parsed argparse namespace.
TOOLS: dict[str, str] = {
    "generate": "seqlm.registry.use:cli_generate",
    "predict": "seqlm.registry.use:cli_predict",
    "fill": "seqlm.registry.use:cli_fill",
    "score": "seqlm.registry.score:cli_score",
    "models": "seqlm.registry.commands:cli_models",
    "promote": "seqlm.registry.commands:cli_promote",
    "rollback": "seqlm.registry.commands:cli_rollback",
    "serve": "seqlm.registry.commands:cli_serve",
    "study": "seqlm.study.commands:cli_study",
}


def _resolve(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(name: str, **options) -> None:
    from seqlm import config
    from seqlm.core.atomic import sweep

    paths = Paths.from_env()
    cfg = config.load(paths.params)
    sweep(*paths.output_folders())  # what killed stages left, though DVC may have restored their outputs
    _resolve(STAGES[name][0])(cfg, paths, **options)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqlm",
        description="Reproducible recurrent language models: download, tokenize, train, evaluate, register.",
        epilog="Run the whole pipeline with `dvc repro` (or `make run`) from the project root.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    stages = {
        name: sub.add_parser(name, help=f"stage: {text}", description=text)
        for name, (_, text) in STAGES.items()
    }
    stages["train"].add_argument(
        "--fresh", action="store_true", help="ignore models/last.ckpt and start over"
    )
    _add_tools(sub)
    return parser


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=str(Paths(Path()).model_dir),  # relative: the project in the current directory
        help="an exported model folder, or a registry URI such as models:/seqlm@champion "
        "(default: %(default)s)",
    )


def _add_tools(sub) -> None:
    gen = sub.add_parser(
        "generate", help="generate text from a prompt (streams tokens)", description="Sample a continuation."
    )
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    gen.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default 0.8)"
    )
    gen.add_argument(
        "--top-k", type=int, default=50, help="sample among the k most likely tokens; 0 = all (default 50)"
    )
    gen.add_argument(
        "--top-p", type=float, default=0.95, help="nucleus: smallest set with this mass (default 0.95)"
    )
    gen.add_argument("--seed", type=int, default=0, help="random seed, for repeatable samples (default 0)")
    _add_model_arg(gen)

    pred = sub.add_parser(
        "predict",
        help="the k most likely next words, with probabilities",
        description="Next-word prediction: sub-word pieces are continued to the next word boundary.",
    )
    pred.add_argument("text", help='the context, e.g. "Every night, I take my dog for a"')
    pred.add_argument("--k", type=int, default=5, help="how many words (default 5)")
    _add_model_arg(pred)

    fill = sub.add_parser(
        "fill",
        help="rank words for the blank ___ in a sentence, from a cloze model (train.objective: cloze)",
        description="Fill one blank with a cloze model, reading the words on both sides. The model "
        "proposes words (1 to 4 blanks in a row filled left to right by a beam search); they and any "
        "--candidates are ranked by pseudo-log-likelihood, each piece of the word blanked in turn with "
        "the others in place (Salazar et al. 2020). Prints rank, word, log-prob (nats) and probability; "
        "named candidates are listed with their rank even below --top. Scoring takes about a quarter "
        "of a second for a 128-wide BiLSTM on one CPU thread, after loading.",
    )
    fill.add_argument("text", help='the sentence with one blank, e.g. "I can converse in ___ fluently"')
    fill.add_argument("--top", type=int, default=10, help="how many words to list (default 10)")
    fill.add_argument(
        "--candidates",
        default="",
        help="comma-separated words to rank too, e.g. English,French (any number of pieces)",
    )
    _add_model_arg(fill)

    from seqlm.registry.score import LINES_PER_BATCH  # numpy only: no heavy imports at module level

    score = sub.add_parser(
        "score",
        help="log-probability and bits per byte of every line of a file (JSON lines)",
        description="Score text with a next-token model. Per line (the default) every line is read on "
        "its own from a fresh state; each gets a record {record: line, line, tokens, bytes, "
        "log_prob_nats (natural log), bits_per_byte}, written as it is scored, and a last record "
        "{record: total} gives the file's bits per byte. --document reads the whole text as the evaluate "
        "stage reads a split (parallel streams, the state carried across lines) and writes only the "
        "total: on data/raw/test.txt it is evaluate's test bits per byte.",
    )
    score.add_argument("file", help="a UTF-8 text file, or - for stdin")
    score.add_argument(
        "--output", help="write the JSON lines here (atomically, complete or not at all) instead of stdout"
    )
    score.add_argument(
        "--batch-size",
        type=int,
        help=f"lines per batch (default {LINES_PER_BATCH}); with --document, parallel streams "
        "(default: evaluate.batch_size of params.yaml)",
    )
    score.add_argument(
        "--document",
        action="store_true",
        help="score the text as one document, the state carried across lines, as evaluate does",
    )
    score.add_argument(
        "--bptt", type=int, help="with --document, tokens per window (default: evaluate.bptt of params.yaml)"
    )
    _add_model_arg(score)

    models = sub.add_parser(
        "models", help="registered versions: aliases, valid and test bits/byte, word perplexity, run"
    )
    models.add_argument(
        "--history", action="store_true", help="also list every move of champion: by whom, when and why"
    )
    promote = sub.add_parser("promote", help="make a registered version the champion (recorded as tags)")
    promote.add_argument("version", help="registered model version number")
    promote.add_argument("--reason", default="", help="why; stored on the version")
    sub.add_parser("rollback", help="move champion back to the previous champion")
    from seqlm.registry.commands import DEFAULT_TIMEOUT_S  # no heavy imports at module level

    serve = sub.add_parser("serve", help="serve models:/<name>@champion over HTTP (mlflow models serve)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every network: no login)",
    )
    serve.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="scoring processes, each with its own copy of the model (default: this machine's cores)",
    )
    serve.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds before a waiting client gets HTTP 504 (default {DEFAULT_TIMEOUT_S}; the work itself "
        "is bounded per request)",
    )

    from seqlm.study import commands as study  # no heavy imports at module level

    study.add_arguments(
        sub.add_parser(
            "study",
            help="queue and run the sequence-model study as DVC experiments; write docs/study.md",
            description="Families × the same data and budget, plus the copy probe × delays; "
            "see docs/study.md.",
        )
    )


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def guarded(fn: Callable[[], None]) -> int:
    """Run ``fn``; user errors become one line on stderr and a non-zero exit code."""
    try:
        fn()
    except SeqlmError as exc:
        return _fail(str(exc))
    except OSError as exc:  # a write the stage does not make itself (MLflow's artifact copies) found no space
        written = exc.filename2 or exc.filename or os.getcwd()  # shutil's copies put the destination second
        if full := disk_full(exc, Path(written)):
            return _fail(str(full))
        raise
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command in STAGES:
        options = {k: v for k, v in vars(args).items() if k != "command"}
        return guarded(lambda: run_stage(args.command, **options))
    if args.command in TOOLS:
        return guarded(lambda: _resolve(TOOLS[args.command])(args))
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


def stage_main(name: str) -> None:
    """Entry point for pipeline/<stage>.py."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sys.exit(guarded(lambda: run_stage(name)))


if __name__ == "__main__":
    sys.exit(main())
