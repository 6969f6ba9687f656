"""The register stage: models/model + reports/eval/metrics.json → a registered version, the champion gate
applied, reports/register.json (docs/architecture.md, decision 8).

The pyfunc is logged into the pipeline's MLflow run, registered with alias ``challenger`` and lineage
tags, and the gate decides whether it becomes ``champion``. A retry after a failure (server down,
killed process) finds the version this run already registered and re-applies the gate to it: one
pipeline run, one version. An unevaluated, diverged or stale evaluation registers nothing.

The gate selects on the valid split; the test score is tagged and reported beside it, never chosen on.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

from seqlm.config import Config
from seqlm.core import atomic
from seqlm.core.errors import SeqlmError
from seqlm.core.hashing import file_sha256
from seqlm.core.paths import Paths
from seqlm.evaluation.protocols import for_model
from seqlm.registry import gate
from seqlm.registry.gate import Score
from seqlm.registry.register import apply_gate, log_evaluation, register_version
from seqlm.tracking.run import RunHandle
from seqlm.tracking.run_record import read_run_json
from seqlm.tracking.store import check_reachable, connect, server_lost, tracking_uri

REPORT_FORMAT = "seqlm-register/1"
NOTHING = "nothing registered"


def run_register(cfg: Config, paths: Paths) -> dict:
    atomic.remove(paths.register_json)  # a failed registration must not leave the last one's record
    report = paths.register_json.relative_to(paths.root)
    then = (
        f"{report} was not written; re-run `dvc repro register` when it answers "
        "(it reuses what this run registered)"
    )
    try:
        with server_lost("register", then):
            return _register(cfg, paths)
    except BaseException:
        # the report is written before it is logged into the run: a failure after that must not leave it
        atomic.remove(paths.register_json)
        raise


def _register(cfg: Config, paths: Paths) -> dict:
    from seqlm.models import export

    uri = tracking_uri(paths)
    check_reachable(uri)
    run_id = read_run_json(paths)["run_id"]
    protocol = for_model(
        export.read_config(paths.model_dir)
    )  # what it refuses depends on the objective alone
    if protocol.not_registrable:
        return not_registered(cfg, paths, run_id, protocol)
    valid, test = challenger_scores(paths)
    weights = file_sha256(paths.model_dir / export.WEIGHTS)
    name = cfg.registry.model_name

    client = connect(uri)
    run = RunHandle(client, run_id)
    check_run(run, (valid, test), uri, paths)
    before = gate.aliases(client, name)
    version, reused = register_version(cfg, paths, run, weights, (valid, test))
    log_evaluation(run, paths, name, version)
    client.set_registered_model_alias(name, gate.CHALLENGER, str(version))
    challenger = replace(valid, version=version)
    decision = apply_gate(cfg, paths, client, version, challenger)
    champion_test = None
    if decision.champion is not None and decision.champion.version is not None:
        mv = client.get_model_version(name, str(decision.champion.version))
        champion_test = gate.tagged_score(mv, "test")

    report = {
        "format": REPORT_FORMAT,
        "model_name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "run_id": run_id,
        "weights_sha256": weights,
        "reused_version": reused,
        "aliases_before": before,
        "aliases_after": gate.aliases(client, name),
        "selected_on": gate.SELECTED_ON,  # the gate compares valid scores; test is reported only
        "challenger": challenger.record(),
        "challenger_test": replace(test, version=version).record(),
        "champion": decision.champion.record() if decision.champion else None,
        "champion_test": champion_test.record() if champion_test else None,
        "min_improvement": cfg.registry.min_improvement,
        "auto_promote": cfg.registry.auto_promote,
        "decision": decision.action,
        "reason": decision.reason,
    }
    atomic.write_json(paths.register_json, report)
    client.log_artifact(run_id, str(paths.register_json), artifact_path="register")
    client.set_tag(run_id, "seqlm.registered_version", f"{name}/{version}")
    print(
        f"register: {name} version {version} ({challenger.bits_per_byte:.4f} valid bits/byte, "
        f"test {test.bits_per_byte:.4f}): "
        f"{decision.action}; {decision.reason}"
    )
    return report


def not_registered(cfg: Config, paths: Paths, run_id: str, protocol) -> dict:
    """The record of a model the registry refuses (a cloze model: it never meets a next-token champion,
    decision 20)."""
    report = {
        "format": REPORT_FORMAT,
        "model_name": cfg.registry.model_name,
        "version": None,
        "run_id": run_id,
        "objective": protocol.objective,
        "decision": "not_registered",
        "reason": protocol.not_registrable,
    }
    atomic.write_json(paths.register_json, report)
    print(f"register: {NOTHING}; {protocol.not_registrable}")
    return report


# ------------------------------------------------------------------------------------------ inputs


def raw_sha256(paths: Paths, split: str) -> str:
    """The identity of a split's raw text: the download manifest's sha256 of data/raw/<split>.txt."""
    try:
        return json.loads(paths.manifest.read_text())["splits"][split]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SeqlmError(
            f"{paths.manifest}: missing or without splits.{split}.sha256; re-run the download stage"
        ) from None


def _number(metrics: dict, key: str, label: str, where) -> float:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SeqlmError(
            f"{where}: {label} is {json.dumps(value)}, not a number; re-run the evaluate stage; {NOTHING}"
        )
    if not math.isfinite(value):
        raise SeqlmError(
            f"{where}: {label} is {value} (the model diverged); lower train.lr and retrain; {NOTHING}"
        )
    return float(value)


def challenger_scores(paths: Paths) -> tuple[Score, Score]:
    """(valid, test): the evaluate stage's scores; an unevaluated or diverged model is refused here.
    The gate compares the valid one; the test one is tagged and reported only."""
    where = paths.eval_metrics
    if not where.is_file():
        raise SeqlmError(
            f"{where}: not found, the model is unevaluated; run the evaluate stage first "
            f"(`dvc repro evaluate`); {NOTHING}"
        )
    try:
        metrics = json.loads(where.read_text())
    except ValueError:
        raise SeqlmError(f"{where}: not valid JSON; re-run the evaluate stage; {NOTHING}") from None
    protocol = metrics.get("protocol")
    if not isinstance(protocol, dict):
        raise SeqlmError(f"{where}: no evaluation protocol; re-run the evaluate stage; {NOTHING}")
    valid = metrics.get("valid")
    if not isinstance(valid, dict):
        raise SeqlmError(f"{where}: no valid metrics; re-run the evaluate stage; {NOTHING}")
    scores = []
    for split, numbers, prefix in (("valid", valid, "valid."), ("test", metrics, "")):
        bits = _number(numbers, "bits_per_byte", f"{prefix}bits_per_byte", where)
        words = _number(numbers, "word_perplexity", f"{prefix}word_perplexity", where)
        scores.append(Score(bits, words, raw_sha256(paths, split), protocol, split=split))
    return scores[0], scores[1]


def check_run(run: RunHandle, scores: tuple[Score, ...], uri: str, paths: Paths) -> None:
    """The run must exist, and reports/eval/metrics.json must be the evaluation mirrored into it."""
    from mlflow.exceptions import MlflowException

    try:
        logged = run.get().data.metrics
    except MlflowException:
        raise SeqlmError(
            f"{paths.run_json}: run {run.run_id} is not in the MLflow store {uri}; re-run train"
        ) from None
    for score in scores:
        mirrored = logged.get(f"{score.split}_bits_per_byte")
        if mirrored is None or not math.isclose(mirrored, score.bits_per_byte, rel_tol=1e-9):
            raise SeqlmError(
                f"{paths.eval_metrics} ({score.split} bits/byte {score.bits_per_byte:.6g}) is not the "
                f"evaluation of run {run.run_id} ({score.split}_bits_per_byte {mirrored}); "
                f"re-run the evaluate stage; {NOTHING}"
            )
