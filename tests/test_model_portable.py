"""The registered model carries its own code: it loads, predicts and serves where seqlm is not installed.

Fast: the pyfunc's whole load-and-predict path, run in a subprocess over a tiny exported model, imports
nothing of the training stack (the model's requirements leave it out). Marked slow, on a registered
champion: the logged model holds seqlm's package and only the inference requirements; an environment
built from those requirements alone (`mlflow models prepare-env --env-manager virtualenv`: pyenv's
Python, `python -m venv`, `pip install -r requirements.txt`) loads `models:/seqlm@champion`, imports
seqlm from the model's code/ and predicts what the project's environment predicts; `mlflow models serve
--env-manager virtualenv` serves it on 127.0.0.1; `mlflow models generate-dockerfile` copies it into an
image that installs its requirements.

The environment is about 1.7 GB and cached under pytest's cache folder, keyed by the model's requirements
and Python, so only the first run pays for building it (`pytest --cache-clear` drops it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from seqlm_testing import REPO, evaluated_project, in_project, tiny_sentencepiece
from team_stack import free_port, start, stop, wait_until_up

import seqlm
from seqlm.registry import register as registration

NAME = "seqlm"
CHAMPION = f"models:/{NAME}@champion"
PACKAGE = Path(seqlm.__file__).parent
TRAINING_STACK = ("lightning", "pytorch_lightning", "lightning_fabric", "dvc", "datasets", "matplotlib")

# Run by another interpreter: loads the served model from its file as MLflow does, answers every task,
# and prints which training-stack modules that imported.
PYFUNC_RUN = """
import json, runpy, sys, types
import pandas as pd
served = runpy.run_path(sys.argv[1])["SeqlmModel"]()
served.load_context(types.SimpleNamespace(artifacts={"model_dir": sys.argv[2]}))
params = json.loads(sys.argv[3])
prompts = pd.DataFrame({"prompt": ["the dog walks to"]})
for task in ("generate", "next_words", "score"):
    assert len(served.predict(None, prompts, params | {"task": task, "max_new_tokens": 4})) == 1
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[4].split(","))))
"""

# Run in the model's environment: what is installed there, then a load from the registry and both tasks.
IN_MODEL_ENV = """
import importlib.util, json, sys
installed = {m: importlib.util.find_spec(m) is not None for m in ("seqlm", "lightning", "dvc", "datasets")}
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import seqlm
prompts = pd.DataFrame({"prompt": ["the dog walks to", "a cat"]})
text = list(model.predict(prompts, params={"max_new_tokens": 12, "seed": 3})["text"])
words = list(model.predict(prompts, params={"task": "next_words", "k": 3})["next_words"])
print(json.dumps({"installed": installed, "seqlm": seqlm.__file__, "text": text, "words": words}))
"""


def clean_env(store: str, **extra: str) -> dict:
    """This process's environment without the project's src on the path, pointed at ``store``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"MLFLOW_TRACKING_URI": store, "MLFLOW_DISABLE_TELEMETRY": "true"} | extra


def run(cmd: list, env: dict, cwd: Path, timeout_s: float = 300) -> str:
    """stdout of ``cmd``; the test fails with the tail of its output when it fails."""
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode:
        pytest.fail(f"{' '.join(map(str, cmd[:6]))} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


# ------------------------------------------------------------------------------------------ the import path


def test_the_pyfunc_loads_and_predicts_without_the_training_stack(tmp_path):
    import torch

    from seqlm import config
    from seqlm.models import build_model, export

    (tmp_path / "spm.model").write_bytes(tiny_sentencepiece())
    cfg = config.parse({"model": {"family": "lstm", "embedding_size": 16, "hidden_size": 16, "dropout": 0.0}})
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    export.export(build_model(cfg.model, 100), None, model_dir, tmp_path / "spm.model", {})

    params = json.dumps(registration.param_defaults())
    argv = [PACKAGE / "registry" / "pyfunc.py", model_dir, params, ",".join(TRAINING_STACK)]
    out = run([sys.executable, "-c", PYFUNC_RUN, *map(str, argv)], dict(os.environ), tmp_path)
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_requirements_are_the_inference_stack_pinned_as_installed():
    from importlib.metadata import version

    requirements = dict(line.split("==") for line in registration.pip_requirements())
    assert set(requirements) == set(registration.INFERENCE_DISTRIBUTIONS)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={requirements['torch']}" in pyproject  # the project's exact pin, no +cpu label
    assert requirements["sentencepiece"] == version("sentencepiece")
    assert registration.package_dir() == PACKAGE and (PACKAGE / "registry" / "pyfunc.py").is_file()


# ------------------------------------------------------------------------------ a registered champion


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A project whose tiny trained model (60 steps) is registered as champion; its sqlite store URI."""
    from seqlm.stages.register import run_register

    project = evaluated_project(tmp_path_factory.mktemp("portable"))
    with in_project(project.root):
        assert run_register(project.config(), project.paths())["decision"] == "promoted"
    return project.root, f"sqlite:///{project.root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def downloaded(champion, tmp_path_factory) -> Path:
    """The champion's model folder, as `mlflow artifacts download` gives it to anyone with the store."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", champion[1])
        return Path(
            mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path_factory.mktemp("dl")))
        )


@pytest.fixture(scope="module")
def model_env(champion, downloaded, request, tmp_path_factory) -> tuple[Path, Path]:
    """(MLFLOW_ENV_ROOT, the environment's python) for the champion's requirements, built once and cached.

    Built by MLflow's own virtualenv manager, the one `mlflow models serve --env-manager virtualenv` uses,
    so the serving test finds it ready. A root without its completion mark (a killed build) is rebuilt."""
    if shutil.which("pyenv") is None:
        pytest.skip(
            "pyenv not found: MLflow's virtualenv env manager builds each environment with pyenv's Python"
        )
    spec = (downloaded / "requirements.txt").read_bytes() + (downloaded / "python_env.yaml").read_bytes()
    root = request.config.cache.mkdir("seqlm-model-envs") / hashlib.sha256(spec).hexdigest()[:16]
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "prepare-env",
            "-m",
            CHAMPION,
            "--env-manager",
            "virtualenv",
        ]
        run(cmd, clean_env(champion[1], MLFLOW_ENV_ROOT=str(root)), tmp_path_factory.mktemp("env"), 1800)
        done.touch()
    (env,) = root.glob("mlflow-*")
    return root, env / "bin" / "python"


@pytest.mark.slow
def test_the_logged_model_holds_seqlm_and_only_the_inference_requirements(downloaded):
    import yaml

    flavor = yaml.safe_load((downloaded / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["code"] == "code"  # MLflow puts <model>/code first on sys.path before loading
    ours = {p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py")}
    logged = downloaded / "code" / "seqlm"
    assert {p.relative_to(logged) for p in logged.rglob("*.py")} == ours
    assert (logged / "inference" / "generator.py").read_bytes() == (
        PACKAGE / "inference" / "generator.py"
    ).read_bytes()

    requirements = (downloaded / "requirements.txt").read_text().split()
    assert requirements == registration.pip_requirements()
    names = {line.split("==")[0] for line in requirements}
    assert "torch==2.13.0" in requirements and not names & {"lightning", "dvc", "datasets", "seqlm"}


@pytest.mark.slow
def test_the_champion_loads_and_predicts_where_seqlm_is_not_installed(
    champion, model_env, tmp_path, monkeypatch
):
    import mlflow
    import pandas as pd

    (tmp_path / "load.py").write_text(IN_MODEL_ENV)
    out = run([model_env[1], "load.py", CHAMPION], clean_env(champion[1]), tmp_path)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["installed"] == {"seqlm": False, "lightning": False, "dvc": False, "datasets": False}
    imported = Path(got["seqlm"])  # <model>/code/seqlm/__init__.py
    assert imported.parents[1].name == "code" and (imported.parents[2] / "MLmodel").is_file()
    assert not imported.is_relative_to(REPO)

    # the same answers as the project's own environment gives
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion[1])
    model = mlflow.pyfunc.load_model(CHAMPION)
    prompts = pd.DataFrame({"prompt": ["the dog walks to", "a cat"]})
    assert got["text"] == list(model.predict(prompts, params={"max_new_tokens": 12, "seed": 3})["text"])
    assert all(t.strip() for t in got["text"])
    here = model.predict(prompts, params={"task": "next_words", "k": 3})["next_words"]
    for theirs, ours in zip(got["words"], here, strict=True):
        assert [w["word"] for w in theirs] == [w["word"] for w in ours]
        assert [w["probability"] for w in theirs] == pytest.approx([w["probability"] for w in ours], rel=1e-5)


@pytest.mark.slow
@pytest.mark.services
def test_mlflow_serves_the_champion_from_its_own_environment(champion, model_env, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    env = clean_env(champion[1], MLFLOW_ENV_ROOT=str(model_env[0]))
    cmd = [
        "models",
        "serve",
        "-m",
        CHAMPION,
        "--env-manager",
        "virtualenv",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    serve = start([sys.executable, "-m", "mlflow", *cmd], env, log, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", serve, log, timeout_s=600)
        body = {"inputs": {"prompt": ["the dog walks to"]}, "params": {"max_new_tokens": 12}}
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as resp:
            status, answer = resp.status, json.loads(resp.read())
    finally:
        stop(serve)
    assert status == 200 and answer["predictions"][0]["text"].strip()
    assert f"{model_env[0]}/mlflow-" in log.read_text()  # served from the cached environment


@pytest.mark.slow
def test_the_generated_dockerfile_installs_the_requirements_and_copies_the_code(champion, tmp_path):
    out = tmp_path / "image"
    cmd = [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", CHAMPION, "-d", str(out)]
    run(cmd, clean_env(champion[1]), tmp_path)
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY model_dir /opt/ml/model" in dockerfile
    assert "C._install_pyfunc_deps('/opt/ml/model'" in dockerfile  # pip install -r its requirements.txt
    copied = out / "model_dir"
    assert "torch==2.13.0" in (copied / "requirements.txt").read_text().split()
    pyfunc = copied / "code" / "seqlm" / "registry" / "pyfunc.py"
    assert pyfunc.read_bytes() == (PACKAGE / "registry" / "pyfunc.py").read_bytes()
