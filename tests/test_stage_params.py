"""Each stage's params in dvc.yaml are exactly the params.yaml keys it reads, found by running it.

DVC reruns a stage when a key it lists changes: a key read but not listed lets a stale output pass for
current, a key listed but never read reruns the stage for nothing. The truth here is what the code does:
each stage's ``run_<stage>`` runs on a tiny project in every mode that reads keys of its own (each kind
of source; next-token training streamed and episodic, and cloze), with every read of a ``section.key``
of its config recorded. A whole section read at once (``model_dump``, ``Config.flat("model")``,
``section_hash``) counts each of its keys. ``Config.flat()`` of every key is the run's record of its
params, which train logs to MLflow beside params.yaml itself; it decides nothing, so it is no read.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
from collections.abc import Iterator

import pytest
import test_download
import yaml
from seqlm_testing import QUICK_EVALUATE, REPO, grammar_text, in_project

from seqlm import cli
from seqlm.config import SECTIONS, Config

TINY = {
    "model.embedding_size": 16,
    "model.hidden_size": 16,
    "train.batch_size": 4,
    "train.bptt": 64,
    "train.warmup_steps": 1,
    "train.max_steps": 4,
    "train.max_minutes": 0,
    "train.val_every_steps": 2,
    "train.log_every_steps": 1,
    "train.early_stopping_patience": 0,
    "evaluate.batch_size": 4,
    "evaluate.bptt": 64,
} | QUICK_EVALUATE

# test_download's https server on 127.0.0.1, which the url source downloads from
certificate, served = test_download.certificate, test_download.served

# The ways a model is trained, each then evaluated and registered: the keys read differ between them.
TRAINING_MODES = {
    "next, streamed": {"train.objective": "next", "train.episodic": False, "model.bidirectional": False},
    "next, episodic": {"train.objective": "next", "train.episodic": True, "model.bidirectional": False},
    "cloze": {"train.objective": "cloze", "train.episodic": False, "model.bidirectional": True},
}


@contextlib.contextmanager
def reads_of(cfg: Config) -> Iterator[set[str]]:
    """The ``section.key``s of ``cfg`` read inside the block. Only ``cfg``'s own sections count, not a
    model config rebuilt from an exported folder; ``cfg.flat()`` of every key counts as no read."""
    read: set[str] = set()
    owner = {id(getattr(cfg, name)): name for name in SECTIONS}
    paused: list[bool] = []

    def record(section, keys) -> None:
        name = owner.get(id(section))
        if name is not None and not paused:
            read.update(f"{name}.{key}" for key in keys)

    def traced(cls):
        fields, get, dump = frozenset(cls.model_fields), cls.__getattribute__, cls.model_dump

        def __getattribute__(self, attr):
            if attr in fields:
                record(self, [attr])
            return get(self, attr)

        def model_dump(self, *args, **kwargs):
            record(self, fields)
            return dump(self, *args, **kwargs)

        return __getattribute__, model_dump

    flat = Config.flat

    def flat_traced(self, *names):
        if names or self is not cfg:
            return flat(self, *names)
        paused.append(True)  # the record of every param, not a read
        try:
            return flat(self)
        finally:
            paused.pop()

    with pytest.MonkeyPatch.context() as mp:
        for cls in SECTIONS.values():
            getattribute, model_dump = traced(cls)
            mp.setattr(cls, "__getattribute__", getattribute)
            mp.setattr(cls, "model_dump", model_dump)
        mp.setattr(Config, "flat", flat_traced)
        yield read


def listed(entries: list) -> set[str]:
    """dvc.yaml's params of a stage as keys: a section stands for every key in it."""
    keys = set()
    for entry in entries:
        assert isinstance(entry, str), f"dvc.yaml: params entry {entry!r} is not a params.yaml key"
        section = SECTIONS.get(entry)
        keys |= {f"{entry}.{key}" for key in section.model_fields} if section else {entry}
    return keys


def entries(keys: set[str]) -> list[str]:
    """What dvc.yaml should list for ``keys``: a section whose every key is read, else the keys."""
    whole = {name for name, section in SECTIONS.items() if listed([name]) <= keys}
    return sorted(whole | {k for k in keys if k.split(".")[0] not in whole})


def mismatches(reads: dict[str, set[str]], params: dict[str, list]) -> list[str]:
    problems = []
    for stage, read in reads.items():
        named = listed(params.get(stage, []))
        if read != named:
            problems.append(
                f"{stage}: reads {sorted(read - named)} that dvc.yaml does not list, lists "
                f"{sorted(named - read)} that it never reads; its params should be {entries(read)}"
            )
    return problems


def run(project, stage: str, **params) -> set[str]:
    """Run ``stage`` as `seqlm <stage>` does, after setting ``params``; the keys it read."""
    project.set(**params)
    cfg = project.config()
    module, function = cli.STAGES[stage][0].split(":")
    with reads_of(cfg) as read:
        getattr(importlib.import_module(module), function)(cfg, project.paths())
    return read


# ------------------------------------------------------------------------------------------ the recorder


def test_the_recorder_sees_keys_sections_and_hashes_but_not_the_record_or_other_configs():
    cfg, other = Config(), Config()
    with reads_of(cfg) as read:
        assert cfg.train.lr == 0.01
        cfg.model.model_dump()
        cfg.section_hash("base.seed", "tokenizer")
        cfg.flat()  # the record of every param
        other.data.source  # another config's read is not this one's
    cfg.train.bptt  # after the block: not recorded
    assert read == {"train.lr", "base.seed"} | listed(["model", "tokenizer"])


def test_a_key_read_but_not_listed_and_one_listed_but_never_read_are_named():
    reads = {"register": {"registry.model_name", "evaluate.prompts"} | listed(["model"])}
    [problem] = mismatches(reads, {"register": ["registry.model_name", "model", "registry.auto_promote"]})
    assert problem == (
        "register: reads ['evaluate.prompts'] that dvc.yaml does not list, lists "
        "['registry.auto_promote'] that it never reads; its params should be "
        "['evaluate.prompts', 'model', 'registry.model_name']"
    )


# ------------------------------------------------------------------------------------------ the stages


def download_in_every_mode(project, url: str) -> set[str]:
    """Every kind of source, the grammar corpus last: the stages after download read it."""
    root = project.root
    (root / "www" / "corpus.txt").write_text(grammar_text(200, seed=3))
    digest = hashlib.sha256((root / "www" / "corpus.txt").read_bytes()).hexdigest()
    (root / "rows").mkdir()
    for split in ("train", "validation", "test"):
        rows = grammar_text(40, seed=4).splitlines()
        (root / "rows" / f"{split}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    (root / "corpus").mkdir()
    for split, lines, seed in (("train", 600, 0), ("valid", 80, 1), ("test", 80, 2)):
        (root / "corpus" / f"{split}.txt").write_text(grammar_text(lines, seed))
    sources = [
        {"data.source": "builtin:kjv"},
        {"data.source": f"url:{url}/corpus.txt", "data.sha256": digest},
        {"data.source": "hf:rows"},
        {"data.source": "synthetic:copy", "data.synthetic_symbols": 1000, "data.delay": 5},
        {"data.source": "files:corpus", "data.sha256": ""},
    ]
    return set().union(*(run(project, "download", **source) for source in sources))


@pytest.mark.slow
def test_each_stage_lists_exactly_the_params_it_reads(tmp_path, served, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    reads: dict[str, set[str]] = {stage: set() for stage in cli.STAGES}
    with in_project(tmp_path) as project:
        reads["download"] = download_in_every_mode(project, served)
        reads["tokenize"] = run(project, "tokenize", **{"tokenizer.vocab_size": 320})
        for mode in TRAINING_MODES.values():
            for stage in ("train", "evaluate", "register"):
                reads[stage] |= run(project, stage, **(TINY | mode))
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(reads) == set(pipeline), "every seqlm stage is a dvc.yaml stage and back"
    problems = mismatches(reads, {stage: spec.get("params", []) for stage, spec in pipeline.items()})
    assert not problems, "\n".join(problems)
