"""The synthetic long-range probes: deterministic text, recall positions that are right under the char
tokenizer, and a recall metric that an oracle aces and a uniform model scores at chance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from seqlm.core.errors import SeqlmError
from seqlm.data import synthetic


def lines(task: str, delay: int, n: int = 200, seed: int = 7, split: str = "train") -> list[str]:
    return "".join(synthetic.generate(task, delay, n, seed, split)).splitlines()


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_same_seed_same_text_other_seed_or_split_other_text(task):
    assert lines(task, 30) == lines(task, 30)
    assert lines(task, 30) != lines(task, 30, seed=8)
    assert lines(task, 30) != lines(task, 30, split="test")


@pytest.mark.parametrize("delay", [1, 10, 200])
def test_copy_lines_recall_the_key_after_delay_fillers_and_the_cue(delay):
    got = lines("copy", delay)
    for line in got:
        assert len(line) == synthetic.line_length("copy", delay) == delay + 3
        assert line[0] in synthetic.KEYS and line[-1] == line[0]
        assert line[-2] == synthetic.CUE
        assert line[1:-2] == synthetic.COPY_FILLER * delay  # nothing between predicts the key
    keys = [line[0] for line in got]
    assert set(keys) == set(synthetic.KEYS)  # uniform over the keys, so chance is 1/8
    assert synthetic.recall_convention("copy", delay)["span"] == delay + 2


@pytest.mark.parametrize("delay", [1, 3, 50, 200])
def test_bracket_lines_close_the_opener_seen_delay_symbols_ago(delay):
    for line in lines("brackets", delay):
        assert len(line) == delay + 2
        assert line[0] in synthetic.OPENERS
        assert line[-1] == synthetic.CLOSERS[synthetic.OPENERS.index(line[0])]
        stack = []  # the body is balanced on its own: the outer opener is the one left open
        for ch in line[1:-1]:
            if ch in synthetic.OPENERS:
                stack.append(ch)
            elif ch in synthetic.CLOSERS:
                assert stack and synthetic.OPENERS.index(stack.pop()) == synthetic.CLOSERS.index(ch)
        assert not stack


@pytest.mark.parametrize("delay", [2, 10, 200])
def test_adding_lines_sum_the_two_marked_values(delay):
    got = lines("adding", delay, n=2000)
    for line in got:
        assert len(line) == synthetic.line_length("adding", delay) == delay + 2
        body, equals, answer = line[:-2], line[-2], line[-1]
        assert equals == synthetic.EQUALS and set(body) <= set(synthetic.VALUES + synthetic.MARKED)
        marked = [i for i, c in enumerate(body) if c in synthetic.MARKED]
        assert len(marked) == 2
        assert marked[0] < max(1, delay // 10) and delay // 2 <= marked[1] < delay  # first tenth, second half
        assert int(answer) == sum(synthetic.MARKED.index(body[i]) for i in marked)
    # the sum of two uniform values 0..4: 4 is the commonest (5/25), the chance the convention reports
    answers = np.bincount([int(line[-1]) for line in got], minlength=9) / len(got)
    assert answers.argmax() == 4 and abs(answers[4] - 0.2) < 0.03
    convention = synthetic.recall_convention("adding", delay)
    assert convention["symbols"] == synthetic.SUMS and convention["chance"] == 0.2
    assert convention["span"] == delay + 1
    assert set(synthetic.alphabet("adding")) == set("".join(got).replace("\n", "")) | set(synthetic.SUMS)


def test_adding_needs_two_values(project):
    from seqlm.stages.download import run_download

    project.set(**{"data.source": "synthetic:adding", "data.delay": 1})
    with pytest.raises(SeqlmError, match=r"data.delay must be ≥ 2 for synthetic:adding"):
        run_download(project.config(), project.paths())


def test_download_stage_writes_splits_and_the_recall_convention(project):
    from seqlm.stages.download import run_download

    project.set(**{"data.source": "synthetic:copy", "data.delay": 20, "data.synthetic_symbols": 23_000})
    run_download(project.config(), project.paths())
    manifest = json.loads(project.paths().manifest.read_text())
    assert manifest["kind"] == "synthetic"
    assert manifest["details"]["recall"] == {
        "position": "last symbol of every line",
        "symbols": synthetic.KEYS,
        "chance": 1 / 8,
        "span": 22,
    }
    sizes = {
        s: len(project.paths().raw_split(s).read_text().splitlines()) for s in ("train", "valid", "test")
    }
    assert sizes == {"train": 900, "valid": 50, "test": 50}  # data.split of 23,000 symbols in lines of 23


def test_unknown_task_is_named(project):
    from seqlm.stages.download import run_download

    project.set(**{"data.source": "synthetic:parity"})
    with pytest.raises(
        SeqlmError,
        match=r"data.source synthetic:parity: no synthetic task named 'parity'; tasks: "
        r"synthetic:copy, synthetic:brackets, synthetic:adding$",
    ):
        run_download(project.config(), project.paths())


# ------------------------------------------------------------------------------------ the recall metric


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The real download and tokenize stages over a copy probe (delay 20), char tokenizer."""
    from seqlm_testing import Project

    from seqlm.stages.download import run_download
    from seqlm.stages.tokenize import run_tokenize

    root = tmp_path_factory.mktemp("probe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQLM_ROOT", str(root))
        project = Project(root)
        project.set(
            **{
                "data.source": "synthetic:copy",
                "data.delay": 20,
                "data.synthetic_symbols": 60_000,
                "tokenizer.type": "char",
                "tokenizer.byte_fallback": False,
                "tokenizer.vocab_size": 32,
            }
        )
        run_download(project.config(), project.paths())
        run_tokenize(project.config(), project.paths())
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(project.paths().spm_model))
    meta = json.loads(project.paths().tokens_meta.read_text())
    tokens = np.fromfile(project.paths().tokens("test"), dtype=meta["dtype"])
    keys = np.array([sp.piece_to_id(k) for k in synthetic.KEYS])
    return project, sp, meta, tokens, keys


def test_each_symbol_is_one_token_and_targets_are_the_lines_last_keys(probe):
    from seqlm.evaluation.streamed import recall_targets

    project, sp, meta, tokens, keys = probe
    text = project.paths().raw_split("test").read_text()
    assert meta["splits"]["test"]["tokens"] == len(text) + text.count("\n")  # + "▁" per line, - "\n" + eos
    targets = recall_targets(tokens, meta["eos_id"], keys)
    assert len(targets) == text.count("\n")
    assert [sp.id_to_piece(int(t)) for t in tokens[targets]] == [line[-1] for line in text.splitlines()]
    # the symbol to remember sits span tokens before the target, with its twin
    assert (tokens[targets - 22] == tokens[targets]).all()


def test_recall_targets_refuse_a_tokenizer_that_merges_symbols(probe):
    from seqlm.evaluation.streamed import recall_targets

    _, _, meta, tokens, keys = probe
    with pytest.raises(SeqlmError, match="set tokenizer.type: char"):
        recall_targets(tokens, meta["eos_id"], keys[:3])


class Oracle(torch.nn.Module):
    """Remembers the last key it read and predicts it everywhere: perfect recall, if state is carried."""

    def __init__(self, vocab: int, keys: np.ndarray):
        super().__init__()
        self.vocab, self.keys = vocab, torch.as_tensor(keys)

    def init_state(self, batch_size, device=None):
        return torch.full((batch_size,), -1, dtype=torch.long)

    def forward(self, x, state):
        logits = torch.zeros(*x.shape, self.vocab)
        for t in range(x.shape[1]):
            is_key = torch.isin(x[:, t], self.keys)
            state = torch.where(is_key, x[:, t], state)
            rows = (state >= 0).nonzero().squeeze(1)
            logits[rows, t, state[rows]] = 10.0
        return logits, state


class Uniform(Oracle):
    def forward(self, x, state):
        return torch.zeros(*x.shape, self.vocab), state


@pytest.mark.parametrize("batch_size,bptt", [(1, 64), (8, 16), (5, 7)])
def test_an_oracle_recalls_everything_in_any_stream_layout(probe, batch_size, bptt):
    from seqlm.evaluation.streamed import recall_metrics, recall_targets

    _, sp, meta, tokens, keys = probe
    targets = recall_targets(tokens, meta["eos_id"], keys)
    got = recall_metrics(Oracle(sp.get_piece_size(), keys), tokens, targets, keys, 22, batch_size, bptt)
    assert got["accuracy"] == 1.0
    # every target but those whose key lies before their stream's start: at most one per stream
    assert len(targets) - batch_size <= got["positions"] <= len(targets)


def test_a_uniform_model_recalls_at_chance(probe):
    from seqlm.evaluation.streamed import recall_metrics, recall_targets

    _, sp, meta, tokens, keys = probe
    targets = recall_targets(tokens, meta["eos_id"], keys)
    got = recall_metrics(Uniform(sp.get_piece_size(), keys), tokens, targets, keys, 22, 8, 64)
    assert abs(got["accuracy"] - 1 / 8) < 0.05  # n ≈ 130: chance ± 3 standard errors
    assert got["bits"] == pytest.approx(math.log2(sp.get_piece_size()))
