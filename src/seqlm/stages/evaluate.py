"""The evaluate stage: models/model + data/tokens + data/raw/test.txt → reports/eval/, mirrored into the
pipeline's MLflow run.

Test and valid metrics under the evaluation protocol with the n-gram yardsticks beside them, recall
accuracy on a synthetic probe corpus, the diagnostics (context ablation, gradient flow) and samples.
The reports are assembled in a temporary folder and swapped in whole, and an earlier evaluation's are
removed first, so a failed evaluation leaves none (docs/architecture.md, decision 11).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from seqlm.config import Config
from seqlm.core import atomic
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.core.redact import redact_url
from seqlm.evaluation import diagnostics, precision, probes
from seqlm.evaluation.ngram import NgramBaselines
from seqlm.evaluation.protocols import for_model
from seqlm.tracking.run import RunHandle
from seqlm.tracking.run_record import read_run_json
from seqlm.tracking.store import check_reachable, connect, lost_connection, server_lost, tracking_uri


def run_evaluate(cfg: Config, paths: Paths) -> dict:
    """models/model + data/tokens + data/raw/test.txt → reports/eval/, mirrored into the pipeline's run."""
    atomic.remove(paths.eval_reports)  # stale reports must not outlive a failed evaluation
    reports = paths.eval_reports.relative_to(paths.root)
    # the reports are swapped in after the run has them: a lost server leaves neither half done
    with server_lost("evaluate", f"{reports} was not written; re-run `dvc repro evaluate` when it answers"):
        return _evaluate(cfg, paths)


def _evaluate(cfg: Config, paths: Paths) -> dict:
    import torch

    from seqlm.models import export

    run, model_config, meta = check_inputs(paths)
    ev = cfg.evaluate
    test = open_split(paths, meta, "test", ev.batch_size)
    valid = open_split(paths, meta, "valid", ev.batch_size)
    mlflow_run = open_run(paths, run["run_id"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = export.load(paths.model_dir, device)
    # scored as trained: the exported objective (decision 20) and train.episodic (decision 22)
    protocol = for_model(model_config, cfg.train.episodic, cfg.base.seed)
    tags = protocol.tags(ev.batch_size, ev.bptt)
    baselines = NgramBaselines(open_split(paths, meta, "train", 1), meta["vocab_size"])
    dtype, chosen = choose_precision(cfg, model_config, protocol, model, valid, meta, device)
    metrics = {}
    for name, tokens in (("test", test), ("valid", valid)):
        with precision.autocast(dtype, device.type):
            totals = protocol.totals(model, tokens, meta["eos_id"], ev.batch_size, ev.bptt, device, name)
        floors = protocol.floors(baselines, tokens, ev.batch_size, ev.bptt, name)
        metrics[name] = protocol.metrics(totals, meta["splits"][name], tags, floors)
    recall = probes.probe_metrics(paths, model, test, meta, ev, device, protocol)
    metrics = metrics["test"] | recall | chosen | {"valid": metrics["valid"]}

    with atomic.atomic_dir(paths.eval_reports) as tmp:
        atomic.write_json(tmp / paths.eval_metrics.name, metrics)
        timings = diagnostics.write(tmp, model, test, valid, meta, ev, device, protocol)
        start = time.perf_counter()
        atomic.write_text(
            tmp / paths.eval_samples.name, SAMPLES[protocol.objective](model, cfg, paths, device)
        )
        print(f"evaluate: {timings}, samples {time.perf_counter() - start:.1f}s")
        log_to_mlflow(mlflow_run, metrics, tmp)
    print(protocol.summary(metrics))
    print(f"evaluate: scored in {chosen['eval_precision']}: {chosen['eval_precision_check']['reason']}")
    return metrics


def choose_precision(cfg: Config, model_config: dict, protocol, model, valid, meta: dict, device):
    """(autocast dtype or None, the record) for the test and valid scores: the training precision where
    the check measures it equal to fp32 (``evaluation.precision``); probes, diagnostics and samples
    stay fp32."""
    from seqlm.training.device import detect_device

    trained_in = model_config.get("training", {}).get("precision", precision.FP32)
    native_bf16 = detect_device("cuda" if device.type == "cuda" else "cpu").bf16
    ev = cfg.evaluate
    return precision.choose(
        ev.precision,
        trained_in,
        protocol,
        model,
        valid,
        meta["splits"]["valid"],
        meta["eos_id"],
        ev.batch_size,
        ev.bptt,
        device,
        native_bf16,
    )


def generated_samples(model, cfg: Config, paths: Paths, device) -> str:
    """samples.md of a next-token model: text generated from ``evaluate.prompts``, next words."""
    from seqlm.inference.generator import Generator
    from seqlm.inference.samples import samples_markdown

    generator = Generator.from_dir(paths.model_dir, str(device))
    return samples_markdown(generator, cfg.evaluate, cfg.base.seed)


def filled_samples(model, cfg: Config, paths: Paths, device) -> str:
    """samples.md of a cloze model: blank fillings of ``evaluate.cloze_prompts``."""
    import sentencepiece as spm

    from seqlm.inference.fill import Filler
    from seqlm.inference.samples import fill_markdown
    from seqlm.models import export

    sp = spm.SentencePieceProcessor(model_file=str(paths.model_dir / export.TOKENIZER))
    return fill_markdown(Filler(model, sp, device), cfg.evaluate)


SAMPLES = {"next": generated_samples, "cloze": filled_samples}  # by the exported model's objective


# ------------------------------------------------------------------------------------------ inputs


def check_inputs(paths: Paths) -> tuple[dict, dict, dict]:
    """run.json, the exported model, meta.json and the raw test text must belong together."""
    from seqlm.data.tokens import read_meta
    from seqlm.models import export

    run = read_run_json(paths)
    model_config = export.read_config(paths.model_dir)
    meta = read_meta(paths)
    model_vocab = model_config["model"]["vocab_size"]
    if model_vocab != meta["vocab_size"]:
        raise SeqlmError(
            f"{paths.model_dir} has vocab_size {model_vocab} but {paths.tokens_meta} has vocab_size "
            f"{meta['vocab_size']}: the model was trained on another tokenizer; "
            "re-run train (`dvc repro train`)"
        )
    spm = paths.model_dir / export.TOKENIZER
    sha = meta.get("spm_model_sha256")
    if sha and spm.is_file() and hashlib.sha256(spm.read_bytes()).hexdigest() != sha:
        raise SeqlmError(
            f"{spm} differs from the tokenizer that wrote {paths.tokens_dir}; "
            "re-run train (`dvc repro train`)"
        )
    trained_in = model_config.get("training", {}).get("run_id")
    if trained_in and trained_in != run["run_id"]:
        raise SeqlmError(
            f"{paths.run_json} names run {run['run_id']} but {paths.model_dir} was trained in run "
            f"{trained_in}; re-run train (`dvc repro train`)"
        )
    for split in ("test", "valid"):
        if meta["splits"][split]["tokens"] == 0:
            raise SeqlmError(
                f"{paths.tokens(split)}: the {split} split is empty (0 tokens); put text in "
                f"{paths.raw_split(split)} (or fix data.split) and re-run the pipeline"
            )
    raw, counted = paths.raw_split("test"), meta["splits"]["test"]["bytes"]
    if not raw.is_file() or raw.stat().st_size != counted:
        size = f"{raw.stat().st_size} bytes" if raw.is_file() else "missing"
        raise SeqlmError(f"{raw} is {size} but {paths.tokens_meta} counted {counted}; re-run tokenize")
    return run, model_config, meta


def open_split(paths: Paths, meta: dict, split: str, batch_size: int) -> np.memmap:
    from seqlm.data.tokens import open_tokens

    tokens = open_tokens(paths.tokens(split), meta["dtype"])
    if len(tokens) < batch_size + 1:
        raise SeqlmError(
            f"{paths.tokens(split)}: {len(tokens)} tokens cannot feed evaluate.batch_size {batch_size} "
            "streams; lower evaluate.batch_size"
        )
    return tokens


def open_run(paths: Paths, run_id: str) -> RunHandle:
    """The pipeline's run, in the store that holds it (docs/architecture.md, decision 7)."""
    uri = tracking_uri(paths)
    check_reachable(uri)
    run = RunHandle(connect(uri), run_id)
    try:
        run.get()
    except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        if lost_connection(exc) is not None:  # not a missing run: a server that died since it answered
            raise
        raise SeqlmError(
            f"{paths.run_json}: run {run_id} is not in the MLflow store {redact_url(uri)} "
            f"({type(exc).__name__}); re-run train (`dvc repro -f train`)"
        ) from None
    return run


# ------------------------------------------------------------------------------------------ outputs


def log_to_mlflow(run: RunHandle, metrics: dict, reports: Path) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    values = [Metric(f"test_{k}", float(v), now, 0) for k, v in _numeric(metrics).items()]
    values += [Metric(f"valid_{k}", float(v), now, 0) for k, v in _numeric(metrics["valid"]).items()]
    recorded = {f"eval.protocol.{k}": str(v).lower() for k, v in metrics["protocol"].items()}
    recorded["eval.precision"] = metrics["eval_precision"]
    recorded["eval.precision_check"] = json.dumps(metrics["eval_precision_check"], sort_keys=True)
    # MLflow params are write-once: a re-evaluation with another protocol keeps the first as params;
    # the tags always hold the protocol of the metrics now in the run.
    logged = run.get().data.params
    params = [Param(k, v) for k, v in recorded.items() if k not in logged]
    tags = [RunTag(k, v) for k, v in recorded.items()]
    run.log_metrics(values)
    run.client.log_batch(run.run_id, params=params, tags=tags)
    run.client.log_artifacts(run.run_id, str(reports), artifact_path="eval")


def _numeric(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
