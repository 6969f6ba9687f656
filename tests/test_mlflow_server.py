"""Integration: a real `mlflow server` (sqlite + served artifacts on 127.0.0.1) behind the whole registry
path.

train → evaluate → register, a second (worse) model through the gate, promote, rollback, then
`seqlm serve` (= `mlflow models serve -m models:/seqlm@champion --env-manager local`) answering
/invocations for both tasks, and refusing a bad task, a bad seed and too much work per request with HTTP
400 and a one-line reason. Every server runs in its own process group and is killed in teardown.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

import pytest
from seqlm_testing import QUICK_EVALUATE, TINY_TRAIN, make_tokens
from team_stack import free_port, sqlite_server, start, stop, wait_until_up

from seqlm.cli import main

pytestmark = pytest.mark.slow  # two servers, two tiny trainings and evaluations: minutes on 2 cores


@pytest.fixture
def tracking_server(tmp_path):
    with sqlite_server(tmp_path / "server") as url:
        yield url


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def refusal(url: str, body: dict) -> tuple[int, str]:
    """(HTTP status, message) of a request the server refuses."""
    try:
        post(url, body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["message"]
    pytest.fail(f"{body} was answered instead of refused")


def pipeline(project, **params) -> dict:
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.stages.register import run_register
    from seqlm.stages.train import run_train

    project.set(**params)
    run_train(project.config(), project.paths())
    run_evaluate(project.config(), project.paths())
    return run_register(project.config(), project.paths())


def test_pipeline_gate_promote_rollback_and_serve_against_a_server(
    project, tracking_server, monkeypatch, tmp_path, capsys
):
    import mlflow
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_tokens(project, lines=1500)
    project.set(**QUICK_EVALUATE)

    first = pipeline(project, **(TINY_TRAIN | {"train.max_steps": 60, "train.val_every_steps": 30}))
    assert first["version"] == 1 and first["decision"] == "promoted"
    worse = pipeline(project, **{"train.max_steps": 10, "train.val_every_steps": 10})
    assert worse["version"] == 2 and worse["decision"] == "kept"
    assert worse["challenger"]["bits_per_byte"] > first["challenger"]["bits_per_byte"]
    assert worse["aliases_after"] == {"challenger": 2, "champion": 1}
    assert "does not beat champion" in capsys.readouterr().out
    from seqlm.stages.register import run_register

    again = run_register(project.config(), project.paths())  # a retry of the same pipeline run
    assert again["version"] == 2 and again["reused_version"] and again["decision"] == "kept"

    assert main(["promote", "2", "--reason", "integration test"]) == 0
    assert main(["rollback"]) == 0
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "champion is now version 1 (was 2)" in table
    assert any(line.split()[:2] == ["1", "champion"] for line in table.splitlines())

    port, log = free_port(), tmp_path / "serve.log"
    env = os.environ | {"SEQLM_ROOT": str(project.root)}
    serve = start([sys.executable, "-m", "seqlm.cli", "serve", "--port", str(port)], env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", serve, log, timeout_s=180)
        prompts = ["the dog walks to", "a cat"]
        generated = post(
            f"{url}/invocations",
            {
                "dataframe_records": [{"prompt": p} for p in prompts],
                "params": {"max_new_tokens": 12, "seed": 5},
            },
        )["predictions"]
        next_words = {"inputs": {"prompt": prompts}, "params": {"task": "next_words", "k": 3}}
        words = post(f"{url}/invocations", next_words)["predictions"]
        refused = {
            reason: refusal(f"{url}/invocations", {"inputs": {"prompt": rows}, "params": params})
            for reason, rows, params in (
                ("task must be one of generate | next_words", prompts, {"task": "translate"}),
                ("seed must be an integer between 0 and", prompts, {"seed": -1}),
                ("the limit per request is 100,000", ["a cat"] * 11, {"max_new_tokens": 10_000}),
            )
        }
    finally:
        stop(serve)

    # the caller's mistake: 400, not 500, and our one-line reason is the last line (MLflow puts
    # "Failed to predict data '<the input>'." before it)
    for reason, (status, message) in refused.items():
        last = message.strip().splitlines()[-1]
        assert status == 400 and last.startswith("Error: ") and reason in last, (reason, message)

    # the served model is version 1 (champion after the rollback): same seed, same text as loading it here
    local = mlflow.pyfunc.load_model("models:/seqlm/1")
    expected = local.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 12, "seed": 5})
    assert [row["text"] for row in generated] == list(expected["text"])
    assert len(words) == 2
    for row in words:
        probs = [w["probability"] for w in row["next_words"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
