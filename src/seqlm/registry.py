"""The register stage: the pyfunc logged, a version registered, the champion gate applied (DESIGN decision 8).

register: models/model + reports/eval/metrics.json -> the pyfunc logged into the pipeline's MLflow run,
a registered version with alias ``challenger`` and lineage tags, the champion gate (promotion.py), and
reports/register.json. A retry after a failure (server down, killed process) finds the version this
run already registered, by its run id and weights sha256, and re-applies the gate to it: one pipeline
run, one version.

The tools `seqlm models | promote | rollback | serve` are in registry_tools.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from seqlm import promotion, tracking
from seqlm.config import Config
from seqlm.errors import SeqlmError
from seqlm.paths import Paths
from seqlm.promotion import Score

REPORT_FORMAT = "seqlm-register/1"
SERVING_CODE = Path(__file__).with_name("serving.py")  # the pyfunc, logged as code
RUN_ID_TAG = "seqlm.run_id"
WEIGHTS_TAG = "seqlm.weights_sha256"
# The sections that shaped the weights; evaluation settings are tagged on their own (the protocol).
MODEL_SECTIONS = ("base.seed", "data", "tokenizer", "model", "train")
SAMPLING_PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


# ------------------------------------------------------------------------------------------ evidence


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def raw_test_sha256(paths: Paths) -> str:
    """The identity of the raw test text: the download manifest's sha256 of data/raw/test.txt."""
    try:
        return json.loads(paths.manifest.read_text())["splits"]["test"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SeqlmError(f"{paths.manifest}: missing or without splits.test.sha256; re-run the download stage") from None


def challenger_score(paths: Paths) -> Score:
    """The evaluate stage's test score; an unevaluated or diverged model is refused here."""
    where = paths.eval_reports / "metrics.json"
    nothing = "nothing registered"
    if not where.is_file():
        raise SeqlmError(f"{where}: not found, the model is unevaluated; run the evaluate stage first (`dvc repro evaluate`); {nothing}")
    try:
        metrics = json.loads(where.read_text())
    except ValueError:
        raise SeqlmError(f"{where}: not valid JSON; re-run the evaluate stage; {nothing}") from None
    for key in ("bits_per_byte", "word_perplexity"):
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SeqlmError(f"{where}: {key} is {json.dumps(value)}, not a number; re-run the evaluate stage; {nothing}")
        if not math.isfinite(value):
            raise SeqlmError(f"{where}: {key} is {value} (the model diverged); lower train.lr and retrain; {nothing}")
    protocol = metrics.get("protocol")
    if not isinstance(protocol, dict):
        raise SeqlmError(f"{where}: no evaluation protocol; re-run the evaluate stage; {nothing}")
    return Score(float(metrics["bits_per_byte"]), float(metrics["word_perplexity"]), raw_test_sha256(paths), protocol)


def evaluation_tags(score: Score) -> dict[str, str]:
    return {
        promotion.BITS_PER_BYTE: repr(score.bits_per_byte),
        promotion.WORD_PERPLEXITY: repr(score.word_perplexity),
        promotion.TEST_SHA256: score.test_sha256,
        promotion.PROTOCOL: json.dumps(score.protocol, sort_keys=True),
    }


def version_tags(cfg: Config, paths: Paths, run_id: str, weights_sha256: str, score: Score) -> dict[str, str]:
    tags = tracking.lineage_tags(paths)  # git commit, dvc.lock hashes of data/raw, data/tokenizer, ...
    tags.update(evaluation_tags(score))
    tags.update({
        RUN_ID_TAG: run_id,
        WEIGHTS_TAG: weights_sha256,
        "seqlm.params_hash": cfg.section_hash(*MODEL_SECTIONS),
        "seqlm.params_hash_sections": ",".join(MODEL_SECTIONS),
        "seqlm.model_family": cfg.model.family,
    })  # fmt: skip
    return tags


# ------------------------------------------------------------------------------------------ the pyfunc


def param_defaults() -> dict:
    """The served params default to what Generator.generate and Generator.next_words default to."""
    import inspect

    from seqlm.generation import Generator

    generate = inspect.signature(Generator.generate).parameters
    next_words = inspect.signature(Generator.next_words).parameters
    return {"task": "generate", **{k: generate[k].default for k in SAMPLING_PARAMS}, "k": next_words["k"].default}


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    kinds = {str: "string", int: "long", float: "double"}
    word = Object([Property("word", "string"), Property("probability", "double")])
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string", "text", required=False), ColSpec(Array(word), "next_words", required=False)]),
        params=ParamSchema([ParamSpec(k, kinds[type(v)], v) for k, v in param_defaults().items()]),
    )


def pip_requirements() -> list[str]:
    """Pinned to what is installed, so logging never asks a package index. seqlm itself is not on an
    index: the model loads where seqlm is installed (`mlflow models serve --env-manager local`)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("mlflow", "torch", "sentencepiece", "safetensors", "numpy", "pandas"):
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return out


def _logged_model(client, experiment_id: str, run_id: str, weights_sha256: str) -> str | None:
    """A model this run already logged, complete, with these weights (a retry reuses it)."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND tags.`{WEIGHTS_TAG}` = '{weights_sha256}'",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return f"models:/{ready[0].model_id}" if ready else None


def log_pyfunc(cfg: Config, paths: Paths, client, run_id: str, weights_sha256: str) -> str:
    """Log the pyfunc into the pipeline's run; returns its models:/<model_id> URI."""
    import mlflow
    import pandas as pd

    import seqlm

    run = client.get_run(run_id)
    reuse = _logged_model(client, run.info.experiment_id, run_id, weights_sha256)
    if reuse:
        return reuse
    # shown in the UI and in serving_input_example.json; MLflow also tries it on the loaded model
    example = (pd.DataFrame({"prompt": [cfg.evaluate.prompts[0]]}), {"task": "generate", "max_new_tokens": 20})
    with mlflow.start_run(run_id=run_id):  # reopens the run; it is FINISHED again on exit
        info = mlflow.pyfunc.log_model(
            name=cfg.registry.model_name,
            python_model=str(SERVING_CODE),
            artifacts={"model_dir": str(paths.model_dir)},  # serving.ARTIFACT; generation.resolve_model_dir finds it
            signature=signature(),
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={"seqlm_version": seqlm.__version__, "needs": "the seqlm package (serve with --env-manager local)"},
            tags={RUN_ID_TAG: run_id, WEIGHTS_TAG: weights_sha256},
        )
    return info.model_uri


def find_version(client, name: str, run_id: str, weights_sha256: str) -> int | None:
    """The version this run already registered with these weights, if a previous attempt got that far."""
    found = client.search_model_versions(
        f"name = '{name}' and run_id = '{run_id}' and tags.`{WEIGHTS_TAG}` = '{weights_sha256}'"
    )
    return min((int(mv.version) for mv in found), default=None)


# ------------------------------------------------------------------------------------------ the stage


def run_register(cfg: Config, paths: Paths) -> dict:
    from seqlm import io
    from seqlm.models import export

    io.remove(paths.register_json)  # a failed registration must not leave the last one's record
    uri = tracking.tracking_uri(paths)
    tracking.check_reachable(uri)
    run_id = tracking.read_run_json(paths)["run_id"]
    export.read_config(paths.model_dir)
    score = challenger_score(paths)
    weights = file_sha256(paths.model_dir / export.WEIGHTS)
    name = cfg.registry.model_name

    client = tracking.client(uri)
    _check_run(client, run_id, score, uri, paths)
    before = promotion.aliases(client, name)
    version, reused = register_version(cfg, paths, client, run_id, weights, score)
    client.set_registered_model_alias(name, promotion.CHALLENGER, str(version))
    challenger = Score(score.bits_per_byte, score.word_perplexity, score.test_sha256, score.protocol, version)
    decision = apply_gate(cfg, paths, client, version, challenger)

    report = {
        "format": REPORT_FORMAT,
        "model_name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "run_id": run_id,
        "weights_sha256": weights,
        "reused_version": reused,
        "aliases_before": before,
        "aliases_after": promotion.aliases(client, name),
        "challenger": challenger.record(),
        "champion": decision.champion.record() if decision.champion else None,
        "min_improvement": cfg.registry.min_improvement,
        "auto_promote": cfg.registry.auto_promote,
        "decision": decision.action,
        "reason": decision.reason,
    }
    io.write_json(paths.register_json, report)
    client.log_artifact(run_id, str(paths.register_json), artifact_path="register")
    client.set_tag(run_id, "seqlm.registered_version", f"{name}/{version}")
    print(f"register: {name} version {version} ({challenger.bits_per_byte:.4f} bits/byte): {decision.action}; {decision.reason}")
    return report


def register_version(cfg: Config, paths: Paths, client, run_id: str, weights: str, score: Score) -> tuple[int, bool]:
    """(version, reused): the version this run registered before, else a new one with lineage tags."""
    import mlflow

    name = cfg.registry.model_name
    version = find_version(client, name, run_id, weights)
    if version is not None:
        print(f"register: {name} version {version} was already registered from run {run_id}; reusing it")
        for key, value in evaluation_tags(score).items():  # the evaluation may have been re-run since
            client.set_model_version_tag(name, str(version), key, value)
        return version, True
    model_uri = log_pyfunc(cfg, paths, client, run_id, weights)
    # tags travel with the creation request: a version never exists without its run id and weights hash
    tags = version_tags(cfg, paths, run_id, weights, score)
    return int(mlflow.register_model(model_uri, name, tags=tags).version), False


def apply_gate(cfg: Config, paths: Paths, client, version: int, challenger: Score) -> promotion.Decision:
    name = cfg.registry.model_name
    if cfg.registry.auto_promote:
        return promotion.gate(client, name, version, challenger, cfg.registry.min_improvement, paths)
    champion = promotion.read_champion(client, name)
    stays = "unset" if champion is None else f"version {champion.version}"
    reason = f"registry.auto_promote is false: version {version} registered as challenger only; champion stays {stays}"
    return promotion.Decision("registered_only", reason, champion and promotion.tagged_score(champion))


def _check_run(client, run_id: str, score: Score, uri: str, paths: Paths) -> None:
    """The run must exist, and reports/eval/metrics.json must be the evaluation mirrored into it (not a stale one)."""
    from mlflow.exceptions import MlflowException

    try:
        logged = client.get_run(run_id).data.metrics.get("test_bits_per_byte")
    except MlflowException:
        raise SeqlmError(f"{paths.run_json}: run {run_id} is not in the MLflow store {uri}; re-run train") from None
    if logged is None or not math.isclose(logged, score.bits_per_byte, rel_tol=1e-9):
        raise SeqlmError(
            f"{paths.eval_reports / 'metrics.json'} (test bits/byte {score.bits_per_byte:.6g}) is not the evaluation "
            f"of run {run_id} (test_bits_per_byte {logged}); re-run the evaluate stage; nothing registered"
        )
