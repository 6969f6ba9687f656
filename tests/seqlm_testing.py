"""Test helpers importable from any test module (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


class Project:
    """A throwaway project root: params.yaml copied from the repo, SEQLM_ROOT pointing at it."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copy(REPO / "params.yaml", root / "params.yaml")

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set(self, **overrides) -> None:
        """``set(**{"tokenizer.vocab_size": 64})`` rewrites params.yaml with the given keys."""
        params = self.params
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            params.setdefault(section, {})[key] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def paths(self):
        from seqlm.core.paths import Paths

        return Paths(self.root)

    def config(self):
        from seqlm import config

        return config.load(self.root / "params.yaml")


def grammar_text(lines: int, seed: int = 0) -> str:
    """English-like lines from a tiny grammar: learnable in a few dozen steps, not memorisable at once."""
    import random

    rng = random.Random(seed)
    subjects = ["the dog", "a cat", "my sister", "the old man", "every child", "the king"]
    verbs = ["walks to", "looks at", "runs from", "sings about", "waits for", "speaks of"]
    objects = ["the river", "a house", "the market", "the hills", "a small boat", "the garden"]
    tails = ["in the morning.", "at night.", "with joy.", "again and again.", "before the rain."]
    out = []
    for i in range(lines):
        out.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(tails)}")
        if i % 7 == 6:
            out.append("")
    return "\n".join(out) + "\n"


def tiny_sentencepiece(vocab_size: int = 100, lines: int = 500, **options) -> bytes:
    """A BPE model of ``grammar_text`` with the project's special ids, as bytes (``options``: more trainer
    settings, e.g. ``byte_fallback``)."""
    import io

    import sentencepiece as spm

    from seqlm.data.tokenizer import BOS_ID, EOS_ID, UNK_ID

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(grammar_text(lines).splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        minloglevel=2,
        **options,
    )
    return model.getvalue()


def make_tokens(project: "Project", vocab_size: int = 320, lines: int = 3000) -> None:
    """The real download and tokenize stages over a generated corpus in train/valid/test layout."""
    from seqlm.stages.download import run_download
    from seqlm.stages.tokenize import run_tokenize

    corpus = project.root / "corpus"
    corpus.mkdir()
    for split, n, seed in (("train", lines, 0), ("valid", lines // 10, 1), ("test", lines // 10, 2)):
        (corpus / f"{split}.txt").write_text(grammar_text(n, seed))
    project.set(**{"data.source": "files:corpus", "tokenizer.vocab_size": vocab_size})
    run_download(project.config(), project.paths())
    run_tokenize(project.config(), project.paths())


TINY_TRAIN = {
    "model.embedding_size": 64,
    "model.hidden_size": 64,
    "model.dropout": 0.0,
    "train.batch_size": 8,
    "train.bptt": 32,
    "train.warmup_steps": 5,
    "train.lr": 0.01,
    "train.max_steps": 200,
    "train.max_minutes": 0,
    "train.val_every_steps": 100,
    "train.log_every_steps": 5,
    "train.early_stopping_patience": 0,
}

# Evaluation settings that keep a test evaluation to seconds.
QUICK_EVALUATE = {
    "evaluate.context_resets": [16],
    "evaluate.gradient_flow_steps": 8,
    "evaluate.sample_tokens": 8,
}


@contextlib.contextmanager
def in_project(root: Path, threads: int | None = 1) -> Iterator[Project]:
    """``root`` as the project: SEQLM_ROOT, the working directory and its own MLflow store (an earlier
    module's exported MLFLOW_TRACKING_URI removed); with ``threads``, that many torch threads (on a busy
    two-core machine OpenMP threads waiting for each other cost more than they add). All restored after."""
    import pytest
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEQLM_ROOT", str(root))
            mp.delenv("MLFLOW_TRACKING_URI", raising=False)
            mp.chdir(root)
            yield Project(root)
    finally:
        torch.set_num_threads(before)


def evaluated_project(root: Path) -> Project:
    """A project in ``root`` after download, tokenize, train (60 steps) and evaluate on the local store."""
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.stages.train import run_train

    with in_project(root, threads=None) as project:
        make_tokens(project, lines=1500)
        project.set(**(TINY_TRAIN | {"train.max_steps": 60, "train.val_every_steps": 30} | QUICK_EVALUATE))
        run_train(project.config(), project.paths())
        run_evaluate(project.config(), project.paths())
    return project


def interrupt_training(root: Path, last_ckpt: Path, sig: int, timeout_s: float = 300) -> tuple[int, str]:
    """Start ``seqlm train --fresh`` in ``root`` and send it ``sig`` once it has written ``last_ckpt``;
    its exit status and stderr. The test fails with the child's stderr when no checkpoint appears (it
    exited first, or ran past ``timeout_s``). stderr goes to a file: a full pipe would stall the child."""
    import os
    import subprocess
    import sys
    import time

    import pytest

    log = root / "interrupted.stderr"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "seqlm.cli", "train", "--fresh"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        deadline = time.time() + timeout_s
        while not last_ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        exited = proc.poll()
        if exited is None:
            os.kill(proc.pid, sig)
        rc = proc.wait(timeout=timeout_s)
    stderr = log.read_text()
    if not last_ckpt.exists():
        why = f"exited with {exited}" if exited is not None else f"was still running after {timeout_s:g} s"
        pytest.fail(
            f"`seqlm train` wrote no {last_ckpt.name} before the signal: it {why}; stderr: {stderr[-2000:]}"
        )
    return rc, stderr
