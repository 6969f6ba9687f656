"""Integration: the team set-up of README's "Team setup": `mlflow server` on PostgreSQL with artifacts in S3
(moto's server), proxied by the server, and clients that set nothing but ``MLFLOW_TRACKING_URI``.

One stack for the module (tests/team_stack.py). Against it: the whole pipeline (download → register) with
its rows in PostgreSQL and its artifacts in the bucket; the gate, promote and rollback; `seqlm serve` of
``@champion``; two `seqlm train` processes at once in one new experiment; and the study's collection of
runs (matching each experiment to its run, tagging it, reading its artifacts and metric history).
Marked slow and services: a few minutes on 2 shared CPU cores, and PostgreSQL (`make postgresql`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from seqlm_testing import QUICK_EVALUATE, TINY_TRAIN, Project, make_tokens
from team_stack import (
    as_client,
    client_env,
    free_port,
    query,
    s3_keys,
    start,
    stop,
    team_stack,
    wait_until_up,
)

from seqlm.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.services]

SHORT_TRAIN = TINY_TRAIN | {"train.max_steps": 60, "train.val_every_steps": 30}
STUDY_EXPERIMENT = "seqlm-study"  # the two concurrent trainings log where the study's runs go
SEEDS = {"team-a": 11, "team-b": 12}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with team_stack(tmp_path_factory.mktemp("team-stack")) as running:
        yield running


def copy_project(source: Path, dest: Path) -> Project:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("models", "reports", "cache"))
    return _existing(dest)


def _existing(root: Path) -> Project:
    """A Project over a root that has its params.yaml already (Project() copies the repository's)."""
    project = object.__new__(Project)
    project.root = root
    return project


@pytest.fixture(scope="module")
def tokenized(stack, tmp_path_factory) -> Path:
    """The download and tokenize stages, run once for the module's projects."""
    root = tmp_path_factory.mktemp("tokenized")
    with pytest.MonkeyPatch.context() as mp:
        as_client(mp, stack, root)
        project = Project(root)
        make_tokens(project, lines=1500)
        project.set(**QUICK_EVALUATE)
    return root


def pipeline(project: Project, **params) -> dict:
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.stages.register import run_register
    from seqlm.stages.train import run_train

    project.set(**params)
    run_train(project.config(), project.paths())
    run_evaluate(project.config(), project.paths())
    return run_register(project.config(), project.paths())


@pytest.fixture(scope="module")
def registered(stack, tokenized, tmp_path_factory):
    """Train, evaluate and register version 1 through the server, as a user would."""
    project = copy_project(tokenized, tmp_path_factory.mktemp("pipeline") / "project")
    with pytest.MonkeyPatch.context() as mp:
        as_client(mp, stack, project.root)
        first = pipeline(project, **SHORT_TRAIN)
    return project, first


def run_id_of(root: Path) -> str:
    return json.loads((root / "models" / "run.json").read_text())["run_id"]


def test_the_whole_pipeline_lands_in_postgres_and_s3(stack, registered, monkeypatch):
    project, first = registered
    as_client(monkeypatch, stack, project.root)
    assert first["version"] == 1 and first["decision"] == "promoted"
    run_id = run_id_of(project.root)

    # the rows are in PostgreSQL...
    assert query(stack.database_uri, "SELECT status FROM runs WHERE run_uuid = %s", (run_id,)) == [
        ("FINISHED",)
    ]
    metrics = {
        k for (k,) in query(stack.database_uri, "SELECT key FROM metrics WHERE run_uuid = %s", (run_id,))
    }
    assert {"train_loss", "val_loss", "test_bits_per_byte"} <= metrics
    versions = query(stack.database_uri, "SELECT name, version, run_id FROM model_versions")
    assert versions == [("seqlm", 1, run_id)]

    # ...the files are in the bucket, under the server's --artifacts-destination...
    keys = s3_keys(stack.s3_endpoint, stack.bucket, stack.artifacts_prefix + "/")
    assert any(k.endswith(f"{run_id}/artifacts/train/params.yaml") for k in keys)
    assert any(k.endswith(f"{run_id}/artifacts/eval/metrics.json") for k in keys)
    assert any(k.endswith("weights.safetensors") for k in keys)

    # ...and a client without S3 keys reads them back through the server
    import mlflow

    client = mlflow.MlflowClient(stack.tracking_uri)
    logged = Path(client.download_artifacts(run_id, "eval/metrics.json", str(project.root / "dl")))
    assert json.loads(logged.read_text()) == json.loads(
        (project.root / "reports/eval/metrics.json").read_text()
    )


def test_gate_promote_and_rollback_through_the_server(stack, registered, monkeypatch, capsys):
    project, first = registered
    as_client(monkeypatch, stack, project.root)
    worse = pipeline(project, **{"train.max_steps": 10, "train.val_every_steps": 10})
    assert worse["version"] == 2 and worse["decision"] == "kept"
    assert worse["challenger"]["bits_per_byte"] > first["challenger"]["bits_per_byte"]
    assert worse["aliases_after"] == {"challenger": 2, "champion": 1}

    assert main(["promote", "2", "--reason", "team stack test"]) == 0
    aliases = "SELECT alias, version FROM registered_model_aliases WHERE name = 'seqlm' ORDER BY alias"
    assert query(stack.database_uri, aliases) == [("challenger", 2), ("champion", 2)]
    assert main(["rollback"]) == 0
    assert query(stack.database_uri, aliases) == [("challenger", 2), ("champion", 1)]
    assert main(["models", "--history"]) == 0
    out = capsys.readouterr().out
    assert "champion is now version 2 (was 1)" in out and "champion is now version 1 (was 2)" in out
    assert "team stack test" in out


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def test_serve_answers_with_the_champion_from_the_server(stack, registered, monkeypatch, tmp_path):
    import mlflow
    import pandas as pd

    project, _ = registered
    as_client(monkeypatch, stack, project.root)
    champion = mlflow.MlflowClient().get_model_version_by_alias("seqlm", "champion").version

    port, log = free_port(), tmp_path / "serve.log"
    serve = start([sys.executable, "-m", "seqlm.cli", "serve", "--port", str(port)], dict(os.environ), log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", serve, log, timeout_s=180)
        prompts = ["the dog walks to", "a cat"]
        body = {
            "dataframe_records": [{"prompt": p} for p in prompts],
            "params": {"max_new_tokens": 12, "seed": 5},
        }
        generated = post(f"{url}/invocations", body)["predictions"]
    finally:
        stop(serve)

    local = mlflow.pyfunc.load_model(f"models:/seqlm/{champion}")
    expected = local.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 12, "seed": 5})
    assert [row["text"] for row in generated] == list(expected["text"])


@pytest.fixture(scope="module")
def two_trainings(stack, tokenized, tmp_path_factory):
    """Two project copies (seeds differ) trained by two `seqlm train` processes at once, in an experiment
    that neither finds: both race to create it."""
    base = tmp_path_factory.mktemp("concurrent")
    roots = {}
    for name, seed in SEEDS.items():
        project = copy_project(tokenized, base / name)
        project.set(**SHORT_TRAIN, **{"base.seed": seed, "base.experiment": STUDY_EXPERIMENT})
        roots[name] = project.root
    started = time.time()
    procs = {}
    for name, root in roots.items():
        env = client_env(stack.tracking_uri) | {"SEQLM_ROOT": str(root), "OMP_NUM_THREADS": "1"}
        procs[name] = start([sys.executable, "-m", "seqlm.cli", "train"], env, root / "train.log", cwd=root)
    try:
        codes = {name: proc.wait(timeout=600) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop(proc)
    logs = {name: (roots[name] / "train.log").read_text() for name in roots}
    return roots, codes, logs, started


def finite_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_two_trainings_at_once_keep_every_run_and_metric(stack, two_trainings, monkeypatch, tmp_path):
    import mlflow

    roots, codes, logs, _ = two_trainings
    assert codes == {name: 0 for name in roots}, logs
    as_client(monkeypatch, stack, tmp_path)
    client = mlflow.MlflowClient()
    run_ids = {name: run_id_of(root) for name, root in roots.items()}
    assert len(set(run_ids.values())) == 2
    experiment = client.get_experiment_by_name(STUDY_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids.values())  # one experiment, no strays

    for name, root in roots.items():
        run = client.get_run(run_ids[name])
        assert run.info.status == "FINISHED"
        assert run.data.params["base.seed"] == str(SEEDS[name])
        # every step metric the run wrote locally is in the store, at its step, with its value
        rows = json.loads((root / "reports/train/train_curve.json").read_text())
        assert rows
        for key in ("train_loss", "lr", "grad_norm", "fraction_clipped", "tokens_per_s"):
            local = [(r["step"], r[key]) for r in rows if math.isfinite(r[key])]
            stored = finite_history(client, run.info.run_id, key)
            assert [s for s, _ in stored] == [s for s, _ in local], key
            assert [v for _, v in stored] == pytest.approx([v for _, v in local], rel=1e-12), key
        val = json.loads((root / "reports/train/val_curve.json").read_text())
        assert finite_history(client, run.info.run_id, "val_loss") == [
            (v["step"], v["val_loss"]) for v in val
        ]
        final = json.loads((root / "reports/train/metrics.json").read_text())
        for key, value in final.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                assert run.data.metrics[f"final_{key}"] == pytest.approx(value, rel=1e-12), key


def test_the_study_collects_its_runs_through_the_server(stack, two_trainings, monkeypatch):
    """collect(): each experiment matched to its own run by params, tagged with the study, its curves read
    from the run's artifacts and its gradient norms from the metric history, all through the server.
    Only DVC (`dvc exp show`) is replaced, by the metrics files DVC would have read."""
    import mlflow

    from seqlm.stages.evaluate import run_evaluate
    from seqlm.study import collect as study_collect
    from seqlm.study.plan import Experiment, Options

    roots, codes, logs, started = two_trainings
    assert codes == {name: 0 for name in roots}, logs
    for root in roots.values():  # evaluate logs the curves collect() reads back
        with monkeypatch.context() as mp:
            as_client(mp, stack, root)
            project = _existing(root)
            run_evaluate(project.config(), project.paths())

    study_root = roots["team-a"]  # its params.yaml is the baseline the experiments override
    as_client(monkeypatch, stack, study_root)
    family = yaml.safe_load((study_root / "params.yaml").read_text())["model"]["family"]
    experiments = [Experiment(name, "text", family, {"base.seed": seed}) for name, seed in SEEDS.items()]

    def dvc_rows(paths, baseline):
        files = study_collect.METRICS.values()
        return {
            name: {"metrics": {f: {"data": json.loads((roots[name] / f).read_text())} for f in files}}
            for name in roots
        }

    monkeypatch.setattr(study_collect, "experiment_rows", dvc_rows)
    options = Options(name=STUDY_EXPERIMENT, stamp="team")
    results = study_collect.collect(_existing(study_root).paths(), options, experiments, "", started)

    client = mlflow.MlflowClient()
    for result in results:
        name, root = result.experiment.name, roots[result.experiment.name]
        assert result.status == "success" and result.run_id == run_id_of(root)
        assert result.ablation == json.loads((root / "reports/eval/context_ablation.json").read_text())
        assert result.gradient == json.loads((root / "reports/eval/gradient_flow.json").read_text())
        rows = json.loads((root / "reports/train/train_curve.json").read_text())
        assert result.max_grad_norm == pytest.approx(max(r["grad_norm"] for r in rows), rel=1e-12)
        run = client.get_run(result.run_id)
        assert run.info.run_name == name
        assert run.data.tags["seqlm.study"] == STUDY_EXPERIMENT and run.data.tags["dvc.experiment"] == name
        assert run.data.tags["seqlm.study.stamp"] == "team"
