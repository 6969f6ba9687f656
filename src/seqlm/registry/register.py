"""Registration, the library part: the pyfunc logged into the pipeline's run, a version with lineage tags.

A retry after a failure (server down, killed process) finds the version this run already registered,
by its run id and weights sha256, so one pipeline run registers one version (docs/architecture.md,
decision 14). The register stage (``seqlm.stages.register``) checks its inputs, calls these and writes
reports/register.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqlm.config import Config
from seqlm.core.paths import Paths
from seqlm.core.redact import redact_url
from seqlm.registry import gate
from seqlm.registry.gate import Score
from seqlm.registry.resolve import WEIGHTS_TAG  # the download cache is keyed by it
from seqlm.tracking.lineage import lineage_tags
from seqlm.tracking.run import RunHandle

PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")  # the pyfunc, logged as code
RUN_ID_TAG = "seqlm.run_id"
# The sections that shaped the weights; evaluation settings are tagged on their own (the protocol).
MODEL_SECTIONS = ("base.seed", "data", "tokenizer", "model", "train")
SAMPLING_PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


# ------------------------------------------------------------------------------------------ tags


def evaluation_tags(*scores: Score) -> dict[str, str]:
    """The valid score (what the gate compares) and the test score (reported only), one protocol."""
    tags = {}
    for score in scores:
        bits, word, sha = gate.tag_names(score.split)
        tags |= {bits: repr(score.bits_per_byte), word: repr(score.word_perplexity), sha: score.text_sha256}
        tags[gate.PROTOCOL] = json.dumps(score.protocol, sort_keys=True)
    return tags


def version_tags(
    cfg: Config, paths: Paths, run_id: str, weights_sha256: str, scores: tuple[Score, ...]
) -> dict[str, str]:
    tags = lineage_tags(paths)  # git commit, dvc.lock hashes of data/raw, data/tokenizer, ...
    tags.update(evaluation_tags(*scores))
    tags.update(
        {
            RUN_ID_TAG: run_id,
            WEIGHTS_TAG: weights_sha256,
            "seqlm.params_hash": cfg.section_hash(*MODEL_SECTIONS),
            "seqlm.params_hash_sections": ",".join(MODEL_SECTIONS),
            "seqlm.model_family": cfg.model.family,
        }
    )
    return tags


# ------------------------------------------------------------------------------------------ the pyfunc


def param_defaults() -> dict:
    """The served params default to what Generator.generate and Generator.next_words default to."""
    import inspect

    from seqlm.inference.generator import Generator

    generate = inspect.signature(Generator.generate).parameters
    next_words = inspect.signature(Generator.next_words).parameters
    return {
        "task": "generate",
        **{k: generate[k].default for k in SAMPLING_PARAMS},
        "k": next_words["k"].default,
    }


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    kinds = {str: "string", int: "long", float: "double"}
    word = Object([Property("word", "string"), Property("probability", "double")])
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema(
            [ColSpec("string", "text", required=False), ColSpec(Array(word), "next_words", required=False)]
        ),
        params=ParamSchema([ParamSpec(k, kinds[type(v)], v) for k, v in param_defaults().items()]),
    )


# What the pyfunc's load and predict import, seqlm's own code aside (it travels in the model's code/):
# a clean environment installs these and nothing of the training stack (lightning, dvc, datasets).
# pydantic: seqlm.config, which the tokenizer module reads its settings class from.
INFERENCE_DISTRIBUTIONS = ("mlflow", "torch", "sentencepiece", "safetensors", "numpy", "pandas", "pydantic")


def package_dir() -> Path:
    """The seqlm package's folder, logged whole as the model's code (MLflow puts it first on sys.path)."""
    import seqlm

    return Path(seqlm.__file__).parent


def pip_requirements() -> list[str]:
    """Pinned to what is installed, so logging never asks a package index; torch without its local
    label (2.13.0+cpu is 2.13.0, as pyproject.toml pins it), which pip matches to the CPU build."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in INFERENCE_DISTRIBUTIONS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return out


def _logged_model(run: RunHandle, experiment_id: str, weights_sha256: str) -> str | None:
    """A model this run already logged, complete, with these weights (a retry reuses it)."""
    from mlflow.entities import LoggedModelStatus

    found = run.client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run.run_id}' AND tags.`{WEIGHTS_TAG}` = '{weights_sha256}'",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return f"models:/{ready[0].model_id}" if ready else None


def log_pyfunc(cfg: Config, paths: Paths, run: RunHandle, weights_sha256: str) -> str:
    """Log the pyfunc into the pipeline's run; returns its models:/<model_id> URI."""
    import mlflow
    import pandas as pd

    import seqlm

    reuse = _logged_model(run, run.get().info.experiment_id, weights_sha256)
    if reuse:
        return reuse
    # shown in the UI and in serving_input_example.json; MLflow also tries it on the loaded model
    example = (
        pd.DataFrame({"prompt": [cfg.evaluate.prompts[0]]}),
        {"task": "generate", "max_new_tokens": 20},
    )
    with mlflow.start_run(run_id=run.run_id):  # reopens the run; it is FINISHED again on exit
        info = mlflow.pyfunc.log_model(
            name=cfg.registry.model_name,
            python_model=str(PYFUNC_CODE),
            artifacts={"model_dir": str(paths.model_dir)},  # pyfunc.ARTIFACT; resolve.find_model_dir finds it
            code_paths=[str(package_dir())],  # the model's code/seqlm: it loads without seqlm installed
            signature=signature(),
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={
                "seqlm_version": seqlm.__version__,
                "needs": "its requirements.txt; seqlm's code is in code/seqlm",
            },
            tags={RUN_ID_TAG: run.run_id, WEIGHTS_TAG: weights_sha256},
        )
    return info.model_uri


# ------------------------------------------------------------------------------------------ versions


def find_version(run: RunHandle, name: str, weights_sha256: str) -> int | None:
    """The version this run already registered with these weights, if a previous attempt got that far."""
    found = run.client.search_model_versions(
        f"name = '{name}' and run_id = '{run.run_id}' and tags.`{WEIGHTS_TAG}` = '{weights_sha256}'"
    )
    return min((int(mv.version) for mv in found), default=None)


def register_version(
    cfg: Config, paths: Paths, run: RunHandle, weights: str, scores: tuple[Score, ...]
) -> tuple[int, bool]:
    """(version, reused): the version this run registered before, else a new one with lineage tags."""
    import mlflow

    name = cfg.registry.model_name
    version = find_version(run, name, weights)
    if version is not None:
        print(f"register: {name} version {version} was already registered from run {run.run_id}; reusing it")
        for key, value in evaluation_tags(*scores).items():  # the evaluation may have been re-run since
            run.client.set_model_version_tag(name, str(version), key, value)
        describe(cfg, paths, run.client, version, scores)
        return version, True
    model_uri = log_pyfunc(cfg, paths, run, weights)
    # tags travel with the creation request: a version never exists without its run id and weights hash
    tags = version_tags(cfg, paths, run.run_id, weights, scores)
    version = int(mlflow.register_model(model_uri, name, tags=tags).version)
    describe(cfg, paths, run.client, version, scores)
    return version, False


# ------------------------------------------------------------------------------------------ model metrics


def log_evaluation(run: RunHandle, paths: Paths, name: str, version: int) -> None:
    """reports/eval/metrics.json on the version's logged model, each metric naming the dataset (the split)
    it was measured on, so the model's page and a search over logged models show its scores."""
    from seqlm.tracking.datasets import log_model_metrics, read_manifest

    model_id = logged_model_id(run.client.get_model_version(name, str(version)))
    if model_id:  # a version registered from a run's artifacts has no logged model to carry them
        metrics = json.loads(paths.eval_metrics.read_text())
        log_model_metrics(run, model_id, metrics, read_manifest(paths))


def logged_model_id(version) -> str | None:
    """The logged model a version was registered from: its ``model_id``, which a sqlite registry leaves
    empty, else the id in its source ``models:/<model_id>``."""
    if version.model_id:
        return version.model_id
    rest = version.source.removeprefix("models:/") if version.source.startswith("models:/") else ""
    return rest if rest and "/" not in rest and "@" not in rest else None


# ------------------------------------------------------------------------------------------ descriptions

MODEL_DESCRIPTION = (
    "Recurrent language models (LSTM, GRU, RNN and feed-forward baselines) from the seqlm pipeline "
    "(download, tokenize, train, evaluate, register). Every version starts as alias `challenger`; the "
    "champion gate makes it `champion` when its valid bits per byte beat the champion's on the same valid "
    "text. Test bits per byte are reported, never chosen on. Lineage and scores are in each version's tags."
)


def version_description(cfg: Config, paths: Paths, scores: tuple[Score, ...]) -> str:
    """What was trained on what, and its scores: the registry page reads without opening tags."""
    from seqlm.models import export

    m = cfg.model
    layers = f"{m.num_layers} layer{'s' if m.num_layers != 1 else ''}"
    size = f"{layers} × {m.hidden_size} hidden, embedding {m.embedding_size}"
    if m.family in ("ffn_window", "bow"):
        size += f", window {m.window}"
    try:
        source = json.loads(paths.manifest.read_text())["source"]  # recorded redacted by download
    except (OSError, ValueError, KeyError, TypeError):
        source = cfg.data.source
    steps = export.read_config(paths.model_dir).get("training", {}).get("steps")
    trained = f"{steps} steps" if steps is not None else "an unknown number of steps"
    score = {s.split: s.bits_per_byte for s in scores}
    numbers = ", ".join(f"{split} {score[split]:.4f}" for split in ("valid", "test") if split in score)
    return (
        f"{m.family} ({size}), trained on {redact_url(str(source))} for {trained} "
        f"({cfg.tokenizer.type} tokenizer, vocabulary {cfg.tokenizer.vocab_size}). "
        f"Bits per byte: {numbers} (the gate selects on valid)."
    )


def describe(cfg: Config, paths: Paths, client, version: int, scores: tuple[Score, ...]) -> None:
    """The registered model's description and this version's: set on every registration, a reused
    version included (its evaluation may have been re-run)."""
    name = cfg.registry.model_name
    if client.get_registered_model(name).description != MODEL_DESCRIPTION:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
    client.update_model_version(name, str(version), description=version_description(cfg, paths, scores))


def apply_gate(cfg: Config, paths: Paths, client, version: int, challenger: Score) -> gate.Decision:
    """The champion gate on ``version``, or with ``registry.auto_promote: false`` only a record of it."""
    name = cfg.registry.model_name
    if cfg.registry.auto_promote:
        return gate.gate(client, name, version, challenger, cfg.registry.min_improvement, paths)
    champion = gate.read_champion(client, name)
    stays = "unset" if champion is None else f"version {champion.version}"
    reason = (
        f"registry.auto_promote is false: version {version} registered as challenger only; "
        f"champion stays {stays}"
    )
    return gate.Decision("registered_only", reason, champion and gate.tagged_score(champion))
