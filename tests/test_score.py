"""`seqlm score` and the pyfunc's score task on a real registered model (a short training run).

Document mode must give the evaluate stage's test bits per byte; per-line mode must be its own definition:
each line from a fresh state, so batching changes nothing, the windows of a long line change nothing,
and the sum over the lines is the episodic protocol's NLL of the same text.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys

import numpy as np
import pytest
from seqlm_testing import evaluated_project, in_project

from seqlm.cli import main

CHAMPION = "models:/seqlm@champion"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A project after download, tokenize, train (60 steps), evaluate and register (version 1, champion)."""
    from seqlm.stages.register import run_register

    root = evaluated_project(tmp_path_factory.mktemp("scored")).root
    with in_project(root) as project:
        run_register(project.config(), project.paths())
    return root


@pytest.fixture
def proj(registered, tmp_path, monkeypatch):
    with in_project(registered) as project:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the registry download
        yield project


@pytest.fixture(scope="module")
def scorer(registered):
    from seqlm.registry.score import Scorer

    return Scorer.from_dir(registered / "models" / "model", "cpu")


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def score(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    rc = main(["score", *argv])
    out, err = capsys.readouterr()
    return rc, records(out), err


# ------------------------------------------------------------------------------------------ the definitions


@pytest.mark.slow
def test_document_mode_is_the_evaluate_stages_test_bits_per_byte(proj, capsys):
    paths = proj.paths()
    evaluated = json.loads(paths.eval_metrics.read_text())
    out = proj.root / "scores" / "test.jsonl"
    test = str(paths.raw_split("test"))
    rc, _, err = score([test, "--document", "--model", CHAMPION, "--output", str(out)], capsys)
    assert rc == 0, err
    [total] = records(out.read_text())
    assert total["record"] == "total" and total["mode"] == "document"
    assert total["protocol"] == evaluated["protocol"]  # evaluate.batch_size and bptt from params.yaml
    assert total["tokens"] == evaluated["tokens"] and total["bytes"] == evaluated["bytes"]
    if evaluated["eval_precision"] == "32-true":  # both read in fp32: the same number to the last digit
        assert total["bits_per_byte"] == pytest.approx(evaluated["bits_per_byte"], rel=1e-9)
    else:  # evaluate scored in the training precision, which its check measured equal to fp32
        tolerance = evaluated["eval_precision_check"]["tolerance_bits_per_byte"]
        assert 0 < abs(total["bits_per_byte"] - evaluated["bits_per_byte"]) <= tolerance
    assert f"{total['bits_per_byte']:.4f} bits/byte" in err

    # other streams are another protocol: a different number, reported with its protocol
    rc, [other], _ = score([test, "--document", "--batch-size", "2", "--bptt", "16"], capsys)
    assert rc == 0 and other["protocol"]["batch_size"] == 2 and other["protocol"]["bptt"] == 16
    assert other["bits_per_byte"] != evaluated["bits_per_byte"]


@pytest.mark.slow
def test_per_line_total_is_the_episodic_protocols_nll(proj, scorer, capsys):
    from seqlm.data.tokens import open_tokens, read_meta
    from seqlm.evaluation.episodic import Episodic

    paths = proj.paths()
    rc, out, _ = score([str(paths.raw_split("test")), "--batch-size", "5"], capsys)
    assert rc == 0
    *lines, total = out
    meta = read_meta(paths)
    tokens = open_tokens(paths.tokens("test"), meta["dtype"])
    episodic = Episodic().totals(scorer.model, tokens, meta["eos_id"], 16, 128, "cpu", "test")
    assert total["lines"] == len(lines) == meta["splits"]["test"]["lines"]
    assert total["tokens"] == episodic.tokens == len(tokens)  # every token of the split a target once
    assert total["bytes"] == sum(r["bytes"] for r in lines) == paths.raw_split("test").stat().st_size
    assert -total["log_prob_nats"] == pytest.approx(episodic.nll, rel=1e-6)
    assert total["bits_per_byte"] == pytest.approx(
        -sum(r["log_prob_nats"] for r in lines) / math.log(2) / total["bytes"], rel=1e-9
    )


@pytest.mark.slow
def test_a_line_scores_the_same_alone_in_a_batch_or_in_windows(scorer):
    from seqlm.registry.lines import line_nll

    texts = ["the dog walks to the river at night.", "", "a cat", "the king " * 60 + "waits for a house."]
    batched = scorer.score(texts, batch_size=3)
    alone = [scorer.score([t], batch_size=1)[0] for t in texts]
    for b, a in zip(batched, alone):
        assert b.tokens == a.tokens and b.bytes == a.bytes
        assert b.nll == pytest.approx(a.nll, rel=1e-5)
    assert sum(s.nll for s in batched) == pytest.approx(sum(s.nll for s in alone), rel=1e-6)
    assert batched[1].tokens == 1 and batched[1].bytes == 1  # a blank line: its eos, its newline
    assert batched[3].tokens > 128  # read in several windows of WINDOW_TOKENS
    episodes = scorer.encode(texts)
    whole = line_nll(scorer.model, episodes, scorer.sp.eos_id(), 10_000, "cpu")
    short = line_nll(scorer.model, episodes, scorer.sp.eos_id(), 7, "cpu")
    np.testing.assert_allclose(short, whole, rtol=1e-5)
    # a likely line scores better per byte than the same words shuffled
    likely, shuffled = scorer.score(
        ["the dog walks to the river at night.", "river dog the night. at to walks"]
    )
    assert likely.bits_per_byte < shuffled.bits_per_byte


# ------------------------------------------------------------------------------------------ the command


@pytest.mark.slow
def test_stdin_streams_the_same_records_as_the_file(proj, tmp_path, capsys, monkeypatch):
    text = "the dog walks to the river at night.\n\na cat looks at the hills with joy.\nno newline at the end"
    path = tmp_path / "in.txt"
    path.write_text(text, encoding="utf-8")
    rc, from_file, err = score([str(path)], capsys)
    assert rc == 0 and "4 lines" in err and "each line from a fresh state" in err
    assert [r["line"] for r in from_file[:-1]] == [1, 2, 3, 4]
    assert from_file[-1]["bytes"] == len(text.encode()) and from_file[-1]["lines"] == 4
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    rc, from_stdin, _ = score(["-"], capsys)
    assert rc == 0 and from_stdin == from_file

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    rc, [document], _ = score(["-", "--document", "--batch-size", "1"], capsys)
    rc_file, [same], _ = score([str(path), "--document", "--batch-size", "1"], capsys)
    assert rc == rc_file == 0 and document == same | {"eval_tokens_per_s": document["eval_tokens_per_s"]}


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_stdout_the_records(proj):
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios
    import threading

    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    shown = []

    def read_terminal():
        with contextlib.suppress(OSError):  # EIO once the child has gone and the terminal is closed
            while data := os.read(master, 4096):
                shown.append(data)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    test = proj.paths().raw_split("test")
    done = subprocess.run(
        [sys.executable, "-m", "seqlm.cli", "score", str(test)],
        stdout=subprocess.PIPE,
        stderr=terminal,
        timeout=300,
    )
    os.close(terminal)
    reader.join(timeout=30)
    os.close(master)
    bar = b"".join(shown).decode()
    assert done.returncode == 0, bar
    assert "score: 100%" in bar and "score: " + str(test) in bar
    assert records(done.stdout.decode())[-1]["record"] == "total"


@pytest.mark.slow
def test_output_appears_only_when_complete(proj, tmp_path, capsys, monkeypatch):
    from seqlm.registry.score import Scorer

    path = tmp_path / "in.txt"
    path.write_text("a cat looks at the hills.\n" * 1000, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    calls = []
    real = Scorer.score

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first chunk's records are already written to the temporary file
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Scorer, "score", interrupted)
    assert main(["score", str(path), "--output", str(out), "--batch-size", "8"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [path]  # no output, and no temporary file beside it
    monkeypatch.setattr(Scorer, "score", real)
    assert main(["score", str(path), "--output", str(out), "--batch-size", "8"]) == 0
    written = records(out.read_text())
    assert len(written) == 1001 and written[-1]["record"] == "total"
    assert capsys.readouterr().out == ""  # the records went to the file


@pytest.mark.slow
def test_the_registered_pyfunc_scores(proj, scorer):
    import mlflow

    texts = ["the dog walks to the river at night.", "a cat", ""]
    model = mlflow.pyfunc.load_model(CHAMPION)
    scored = model.predict(__import__("pandas").DataFrame({"prompt": texts}), params={"task": "score"})
    assert list(scored.columns) == ["tokens", "bytes", "log_prob_nats", "bits_per_byte"]
    for row, expected in zip(scored.itertuples(), scorer.score(texts)):
        assert row.tokens == expected.tokens and row.bytes == expected.bytes
        assert row.log_prob_nats == pytest.approx(-expected.nll, rel=1e-5)
        assert row.bits_per_byte == pytest.approx(expected.bits_per_byte, rel=1e-5) and row.bits_per_byte > 0


# ------------------------------------------------------------------------------------------ bad input


def one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_one_line_before_any_model_loads(project, tmp_path, capsys):
    missing_model = ["--model", str(tmp_path / "no-model")]  # never reached: the input is checked first
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("first line\ncaf\xe9\n".encode("latin-1"))
    cases = {
        "missing.txt": ("missing.txt: no such file",),
        "empty.txt": ("empty.txt is empty; there is nothing to score",),
        "latin1.txt": ("latin1.txt: not valid UTF-8 at byte 14 (line 2)",),
    }
    for name, needles in cases.items():
        assert main(["score", str(tmp_path / name), *missing_model]) == 2
        one_line_error(capsys.readouterr().err, *needles)
    for flag in ("--batch-size", "--bptt"):
        assert main(["score", str(tmp_path / "latin1.txt"), flag, "0"]) == 2
        one_line_error(capsys.readouterr().err, f"{flag} must be a positive integer, got 0")
    (tmp_path / "ok.txt").write_text("a line\n")
    assert main(["score", str(tmp_path / "ok.txt"), *missing_model]) == 2
    one_line_error(capsys.readouterr().err, "no-model: no model folder there")


@pytest.mark.slow
def test_bad_stdin_and_unknown_models_are_one_line(proj, tmp_path, capsys, monkeypatch):
    ok = tmp_path / "ok.txt"
    ok.write_text("a cat\n")
    for model, needle in (
        (CHAMPION.replace("seqlm@", "nope@"), "models:/nope@champion: "),
        ("models:/seqlm/9", "models:/seqlm/9: "),
    ):
        assert main(["score", str(ok), "--model", model]) == 2
        one_line_error(capsys.readouterr().err, needle)

    out = tmp_path / "out.jsonl"
    for data, needle in ((b"", "stdin is empty"), (b"good\nbad \xff\n", "stdin: not valid UTF-8 at byte 9")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert main(["score", "-", "--output", str(out)]) == 2
        one_line_error(capsys.readouterr().err, needle)
        assert not out.exists()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["score", "-", "--document"]) == 2
    one_line_error(capsys.readouterr().err, "stdin is empty")
