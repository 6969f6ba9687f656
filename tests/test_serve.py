"""`seqlm serve` and the limits of the served model.

The command line (host, workers, timeout, handed to `mlflow models serve`); the pyfunc's checks called
directly on a tiny untrained LSTM, the module loaded from its file as MLflow loads it; and, marked slow,
a real `seqlm serve` of a registered champion on 127.0.0.1 that answers every kind of bad input with
HTTP 400 and a one-line reason, and still answers afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from seqlm_testing import evaluated_project, tiny_sentencepiece
from team_stack import free_port, start, stop, wait_until_up

import seqlm.registry
from seqlm.cli import main
from seqlm.registry import commands

NAME = "seqlm"
PYFUNC = Path(seqlm.registry.__file__).parent / "pyfunc.py"


# ------------------------------------------------------------------------------------------ the command


def test_serve_command_passes_host_workers_and_timeout():
    cmd = commands.serve_command(NAME, 5123, host="0.0.0.0", workers=3, timeout_s=90)
    assert cmd[0] == str(Path(sys.executable).parent / "mlflow")
    assert cmd[1:7] == ["models", "serve", "-m", "models:/seqlm@champion", "--env-manager", "local"]
    assert cmd[7:] == ["-h", "0.0.0.0", "-p", "5123", "-w", "3", "-t", "90"]
    defaults = commands.serve_command(NAME, 5123)
    assert defaults[7:] == ["-h", "127.0.0.1", "-p", "5123", "-w", "1", "-t", str(commands.DEFAULT_TIMEOUT_S)]


def test_serve_flags_default_to_loopback_all_cores_and_a_timeout_above_the_largest_request():
    from seqlm.cli import _build_parser

    args = _build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers, args.timeout) == ("127.0.0.1", 5001, None, 300)
    assert commands.cores() == len(os.sched_getaffinity(0))  # what cli_serve uses for workers=None


def test_serve_env_splits_the_cores_between_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = commands.serve_env("sqlite:////x/mlflow.db", workers=1)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert (
        env["MLFLOW_TRACKING_URI"] == "sqlite:////x/mlflow.db" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    )
    assert env["OMP_NUM_THREADS"] == str(commands.cores())
    assert commands.serve_env("sqlite:////x", workers=commands.cores())["OMP_NUM_THREADS"] == "1"
    assert commands.serve_env("sqlite:////x", workers=1000)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's choice stands
    assert commands.serve_env("sqlite:////x", workers=1)["OMP_NUM_THREADS"] == "7"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--timeout", "0"], "--timeout must be at least 1 second, got 0"),
        (["--port", "70000"], "--port must be between 1 and 65535, got 70000"),
        (["--host", " "], "--host is empty"),
    ],
)
def test_bad_serve_flags_are_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("SEQLM_ROOT", str(tmp_path))  # no project there: the flags are checked first
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# ------------------------------------------------------------------------------------------ the pyfunc


@pytest.fixture(scope="module")
def pyfunc():
    """pyfunc.py loaded from its file, as MLflow loads a model from code (nothing in seqlm imports it)."""
    spec = importlib.util.spec_from_file_location("seqlm_served_pyfunc", PYFUNC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model(pyfunc):
    """The served model over a tiny untrained LSTM (the limits do not depend on the weights)."""
    import sentencepiece as spm
    import torch

    from seqlm import config
    from seqlm.inference.generator import Generator
    from seqlm.models import build_model

    sp = spm.SentencePieceProcessor(model_proto=tiny_sentencepiece(byte_fallback=False))
    cfg = config.parse({"model": {"family": "lstm", "embedding_size": 32, "hidden_size": 32, "dropout": 0.0}})
    torch.manual_seed(0)
    served = pyfunc.SeqlmModel()
    served.generator = Generator(build_model(cfg.model, sp.GetPieceSize()), sp)
    return served


def ask(model, prompts: list, **params):
    """What the scoring server does: the signature's defaults filled in, then predict."""
    import pandas as pd

    from seqlm.registry.register import param_defaults

    frame = pd.DataFrame({"prompt": pd.Series(prompts, dtype=object)})  # None stays None, as in JSON
    return model.predict(None, frame, param_defaults() | params)


def test_next_words_work_counts_k(model):
    from mlflow.exceptions import MlflowException

    # 8 pieces deep × 4·k wide per prompt: 31 × 3,200 = 99,200 tokens of work fit, 32 do not
    with pytest.raises(MlflowException) as refused:
        ask(model, ["the dog"] * 32, task="next_words", k=100)
    assert refused.value.get_http_status_code() == 400
    assert str(refused.value.message) == (
        "32 prompts × 3,200 (next-word search 8 pieces deep × 400 wide for k=100) = 102,400 tokens of work; "
        "the limit per request is 100,000: send fewer prompts or a smaller k"
    )
    rows = ask(model, ["the dog"] * 31, task="next_words", k=100)["next_words"]
    assert len(rows) == 31 and all(0 < len(row) <= 100 for row in rows)
    with pytest.raises(MlflowException, match="k must be between 1 and 100, got -1"):
        ask(model, ["the dog"], task="next_words", k=-1)


@pytest.mark.parametrize(
    "bad, shown", [(None, "None"), (math.nan, "nan"), (3, "3"), (["a"], "['a']"), ({"a": 1}, "{'a': 1}")]
)
def test_a_prompt_that_is_not_a_string_is_refused_not_stringified(model, bad, shown):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as refused:
        ask(model, ["the dog", bad], max_new_tokens=2)
    assert refused.value.get_http_status_code() == 400
    assert refused.value.message == f"prompt in row 1 must be a string, got {shown}"


def test_only_the_prompt_column_is_taken(model):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from seqlm.registry.register import param_defaults

    frame = pd.DataFrame({"prompt": ["the dog"], "text": ["x"]})
    with pytest.raises(
        MlflowException, match=r"send one column, prompt \(a string per row\); got column 'text'"
    ):
        model.predict(None, frame, param_defaults())


@pytest.mark.parametrize(
    "params, message",
    [
        ({"temperature": 1e-300}, "temperature must be 0 (greedy) or between 1e-06 and 1e+06, got 1e-300"),
        ({"temperature": 1e308}, "temperature must be 0 (greedy) or between 1e-06 and 1e+06, got 1e+308"),
        ({"top_p": 1e-300}, "top_p must be between 1e-06 and 1 (1 = off), got 1e-300"),
        ({"temperature": math.nan}, "temperature must be 0 (greedy) or between 1e-06 and 1e+06, got nan"),
        ({"top_p": math.nan}, "top_p must be between 1e-06 and 1 (1 = off), got nan"),
        ({"top_k": -1}, "top_k must be >= 0 (0 = off), got -1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and 10,000, got 0"),
        ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
    ],
)
def test_sampling_params_float32_cannot_honour_are_400_with_the_reason(model, params, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as refused:
        ask(model, ["the dog"], **({"max_new_tokens": 2} | params))
    assert refused.value.get_http_status_code() == 400 and refused.value.message == message


def test_the_edges_of_the_sampling_ranges_still_sample(model):
    for params in ({"temperature": 0.0}, {"temperature": 1e-6}, {"temperature": 1e6}, {"top_p": 1e-6}):
        assert len(ask(model, ["the dog"], max_new_tokens=3, seed=1, **params)["text"]) == 1


def test_a_bad_value_is_quoted_short(model):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as refused:
        ask(model, ["the dog"], task="x" * 100_000)
    message = refused.value.message
    assert message.startswith("task must be one of generate | next_words | score, got 'xxxx")
    assert message.endswith("… (100,002 characters)") and len(message) < 150


# ------------------------------------------------------------------------------------------ served


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """(HTTP status, the last line of the message or the body) of a request to /invocations."""
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        return exc.code, json.loads(text)["message"].strip().splitlines()[-1]


BAD = {  # the body (JSON, NaN allowed as Python's json writes it) → what the last line of the answer says
    # (the "inputs" format is cast to the signature's string type by MLflow first: null arrives as "None")
    "null prompt": (
        {"dataframe_records": [{"prompt": "a"}, {"prompt": None}]},
        "prompt in row 1 must be a string, got",  # None or nan: pandas' choice beside a string
    ),
    "NaN prompt": ({"dataframe_records": [{"prompt": math.nan}]}, "must be a string, got nan"),
    "list prompt": ({"inputs": {"prompt": [["a"]]}}, "prompt in row 0 must be a string, got ['a']"),
    "wrong column": ({"dataframe_records": [{"text": "a"}]}, "Model is missing inputs ['prompt']"),
    "no rows": ({"dataframe_records": []}, "Model is missing inputs ['prompt']"),
    "no input field": ({"params": {"task": "generate"}}, "exactly one of the input fields"),
    "negative k": ({"inputs": {"prompt": ["a"]}, "params": {"task": "next_words", "k": -1}}, "k must be"),
    "k not a number": ({"inputs": {"prompt": ["a"]}, "params": {"task": "next_words", "k": "x"}}, "'k'"),
    "k × rows": (
        {"inputs": {"prompt": ["a"] * 32}, "params": {"task": "next_words", "k": 100}},
        "102,400 tokens of work; the limit per request is 100,000: send fewer prompts or a smaller k",
    ),
    "NaN temperature": ({"inputs": {"prompt": ["a"]}, "params": {"temperature": math.nan}}, "got nan"),
    "tiny temperature": ({"inputs": {"prompt": ["a"]}, "params": {"temperature": 1e-300}}, "between 1e-06"),
    "3 MB of prompts": (
        {"inputs": {"prompt": ["a" * 9_999 + " "] * 300}},
        "the request's prompts have 3,000,000 characters in all; the limit is 1,000,000",
    ),
    "task": ({"inputs": {"prompt": ["a"]}, "params": {"task": "x" * 10_000}}, "(10,002 characters)"),
}


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A project whose tiny trained model (60 steps) is registered as champion, in the module's store."""
    from seqlm_testing import in_project

    from seqlm.stages.register import run_register

    project = evaluated_project(tmp_path_factory.mktemp("served"))
    with in_project(project.root):
        assert run_register(project.config(), project.paths())["decision"] == "promoted"
    return project


@pytest.mark.slow
def test_served_champion_answers_bad_input_with_400_and_keeps_serving(champion, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    env = os.environ | {"SEQLM_ROOT": str(champion.root), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = ["serve", "--port", str(port), "--workers", "2", "--timeout", "60"]
    serve = start([sys.executable, "-m", "seqlm.cli", *argv], env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", serve, log, timeout_s=180)
        answers = {name: post(url, json.dumps(body).encode()) for name, (body, _) in BAD.items()}
        good = {"inputs": {"prompt": ["the dog walks to"]}, "params": {"task": "next_words", "k": 3}}
        status, after = post(url, json.dumps(good).encode())
    finally:
        stop(serve)
    text = log.read_text()
    assert f"at http://127.0.0.1:{port}/invocations (2 workers, 60 s timeout)" in text
    assert text.count("Started server process") == 2, text[-3000:]  # uvicorn's line, once per worker
    wrong = {
        name: answers[name]
        for name, (_, reason) in BAD.items()
        if not (answers[name][0] == 400 and reason in answers[name][1] and len(answers[name][1]) < 1000)
    }
    assert not wrong
    assert status == 200 and len(json.loads(after)["predictions"][0]["next_words"]) == 3
