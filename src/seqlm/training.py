"""Trainer assembly for the train stage: precision, callbacks, resume, MLflow, exported model, reports."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from dataclasses import dataclass

from seqlm.config import Config
from seqlm.errors import SeqlmError
from seqlm.io import remove, write_json
from seqlm.paths import Paths

# What `precision: auto` picks on a CPU with native bfloat16 (AVX512-BF16 or AMX). Set by measurement:
# bench/precision_parity.py compares bf16-mixed with 32-true at equal steps (docs/performance.md).
CPU_BF16_AUTO_PRECISION = "bf16-mixed"


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu" | "cuda" | "mps"
    name: str = "cpu"
    bf16: bool = False  # computes in bfloat16 natively: Ampere GPUs (capability ≥ 8.0) and newer, or AVX512-BF16/AMX CPUs


def detect_device(accelerator: str) -> DeviceInfo:
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(0)
        return DeviceInfo("cuda", torch.cuda.get_device_name(0), bf16=major >= 8 and torch.cuda.is_bf16_supported())
    if accelerator in ("gpu", "cuda"):
        raise SeqlmError(f"params.yaml: train.accelerator is {accelerator!r} but no CUDA GPU is visible; use auto or cpu")
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return DeviceInfo("mps", "mps")
    return DeviceInfo("cpu", "cpu", bf16=_cpu_has_bf16())


def _cpu_has_bf16() -> bool:
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: str, device: DeviceInfo) -> str:
    """DESIGN decision 5: bf16-mixed on GPUs that have it, 16-mixed with loss scaling on older ones."""
    if requested != "auto":
        return requested
    if device.kind == "cuda":
        return "bf16-mixed" if device.bf16 else "16-mixed"
    if device.kind == "mps":
        return "16-mixed"
    # Without native bf16 the CPU emulates it, slower than fp32.
    return CPU_BF16_AUTO_PRECISION if device.bf16 else "32-true"


# ------------------------------------------------------------------------------------------- resume


def resume_fingerprint(cfg: Config, meta: dict) -> str:
    """Everything that makes a checkpoint belong to this training: params and the token data."""
    import hashlib

    payload = json.dumps({"params": cfg.section_hash("base", "model", "train"), "meta": meta}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Resume:
    ckpt_path: str | None
    run_id: str | None


def resume_point(paths: Paths, fingerprint: str, fresh: bool) -> Resume:
    """Continue an interrupted run with the same params; anything else starts over."""
    state_file = paths.models_dir / "last.json"
    ckpt = paths.models_dir / "last.ckpt"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if fresh or not ckpt.is_file() or state.get("fingerprint") != fingerprint or state.get("complete"):
        if ckpt.is_file():
            why = "--fresh" if fresh else ("the last run finished" if state.get("complete") else "params or data changed")
            print(f"train: starting fresh ({why}); removing {ckpt.relative_to(paths.root)}")
        remove(ckpt, paths.models_dir / "best.safetensors", state_file)
        return Resume(None, None)
    print(f"train: resuming from {ckpt.relative_to(paths.root)} (same params; pass --fresh or delete it to start over)")
    return Resume(str(ckpt), state.get("run_id"))


# ---------------------------------------------------------------------------------------- the stage


def run_train(cfg: Config, paths: Paths, fresh: bool = False) -> dict:
    from seqlm import tracking

    uri = tracking.tracking_uri(paths)
    tracking.check_reachable(uri)

    import lightning.pytorch as pl
    import torch

    from seqlm.callbacks import BestWeights, PeriodicCheckpoint, TrainProgress
    from seqlm.data.datamodule import TokenDataModule, read_meta
    from seqlm.lm import LitLanguageModel
    from seqlm.models import build_model

    meta = read_meta(paths)
    device = detect_device(cfg.train.accelerator)
    precision = resolve_precision(cfg.train.precision, device)
    fingerprint = resume_fingerprint(cfg, meta)
    resume = resume_point(paths, fingerprint, fresh)

    pl.seed_everything(cfg.base.seed, workers=True, verbose=False)
    if device.kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(cfg.model, meta["vocab_size"])
    datamodule = TokenDataModule(paths, cfg.train.batch_size, cfg.train.bptt, cfg.train.variable_bptt, cfg.base.seed)

    mlflow_client = tracking.client(uri)
    experiment = tracking.experiment_id(mlflow_client, cfg.base.experiment, paths)
    run_id = resume.run_id or _start_run(mlflow_client, experiment, cfg, paths, device, precision, model)
    if resume.run_id:
        mlflow_client.update_run(run_id, status="RUNNING")
    write_json(paths.models_dir / "last.json", {"fingerprint": fingerprint, "run_id": run_id, "complete": False})

    progress = TrainProgress(mlflow_client, run_id, cfg.train.log_every_steps)
    best = BestWeights(paths.models_dir / "best.safetensors")
    callbacks = [progress, best, PeriodicCheckpoint(paths.models_dir / "last.ckpt", cfg.train.checkpoint_every_minutes)]
    if cfg.train.early_stopping_patience:
        callbacks.append(
            pl.callbacks.EarlyStopping("val_loss", patience=cfg.train.early_stopping_patience, check_on_train_epoch_end=False)
        )
    trainer = pl.Trainer(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        strategy=cfg.train.strategy,
        num_nodes=cfg.train.num_nodes,
        precision=precision,
        max_epochs=cfg.train.max_epochs,
        max_steps=cfg.train.max_steps or -1,
        max_time=dt.timedelta(minutes=cfg.train.max_minutes) if cfg.train.max_minutes else None,
        val_check_interval=cfg.train.val_every_steps or 1.0,
        check_val_every_n_epoch=None if cfg.train.val_every_steps else 1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        use_distributed_sampler=False,
        callbacks=callbacks,
        default_root_dir=str(paths.models_dir),
    )
    windows = datamodule.split_windows("train", trainer.global_rank, trainer.world_size)
    total_steps = cfg.train.max_steps or cfg.train.max_epochs * windows
    valid_tokens_per_byte = meta["splits"]["valid"]["tokens"] / meta["splits"]["valid"]["bytes"]
    lm = LitLanguageModel(model, cfg.train, valid_tokens_per_byte, total_steps)

    try:
        trainer.fit(lm, datamodule=datamodule, ckpt_path=resume.ckpt_path)
    except BaseException as exc:
        progress.close()
        if isinstance(exc, SeqlmError):
            # A diverged run leaves nothing to resume from or to export.
            remove(paths.models_dir / "last.ckpt", paths.models_dir / "best.safetensors", paths.models_dir / "last.json")
            mlflow_client.set_terminated(run_id, status="FAILED")
        else:
            mlflow_client.set_terminated(run_id, status="KILLED")
        raise
    if not lm.val_history or lm.val_history[-1][0] != trainer.global_step:
        trainer.validate(lm, datamodule=datamodule, verbose=False)

    if trainer.global_rank != 0:
        return {}
    return _finish(cfg, paths, trainer, lm, progress, best, meta, run_id, mlflow_client, precision, device)


def _start_run(mlflow_client, experiment, cfg, paths, device, precision, model) -> str:
    from seqlm import tracking

    tags = tracking.lineage_tags(paths)
    tags.update({"device": device.name, "precision": precision, "model.family": cfg.model.family, "seqlm.stage": "train"})
    run = mlflow_client.create_run(experiment, run_name=f"{cfg.model.family}-{cfg.model.hidden_size}", tags=tags)
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in cfg.flat().items()]
    params.append(Param("model.num_parameters", str(model.num_parameters())))
    params.append(Param("train.precision_resolved", precision))
    for i in range(0, len(params), 100):
        mlflow_client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def _finish(cfg, paths, trainer, lm, progress, best, meta, run_id, mlflow_client, precision, device) -> dict:
    from seqlm import tracking
    from seqlm.models import export

    if not lm.val_history or not math.isfinite(lm.best_val_loss):
        raise SeqlmError("training ended before any validation; raise train.max_minutes or train.max_steps")
    best_loss = lm.best_val_loss
    valid = meta["splits"]["valid"]
    bits_per_byte = best_loss / math.log(2) * valid["tokens"] / valid["bytes"]
    summary = progress.summary()
    metrics = {
        "train_loss": summary["train_loss"],
        "val_loss": best_loss,
        "val_bits_per_byte": bits_per_byte,
        "val_token_perplexity": math.exp(best_loss),
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "wall_seconds": summary["wall_seconds"],
        "fraction_clipped": summary["fraction_clipped"],
        "num_parameters": lm.model.num_parameters(),
        "precision": precision,
        "stopped_by": _stop_reason(trainer, cfg),
    }
    info = {
        "tokenizer": {k: meta[k] for k in ("vocab_size", "dtype") if k in meta} | {"meta": meta},
        "training": {"val_loss": best_loss, "val_bits_per_byte": bits_per_byte, "steps": trainer.global_step,
                     "precision": precision, "device": device.name, "run_id": run_id},
    }  # fmt: skip
    export.export(lm.model.cpu(), best.path if best.path.is_file() else None, paths.model_dir, paths.spm_model, info)

    reports = paths.train_reports
    write_json(reports / "metrics.json", metrics)
    write_json(reports / "train_curve.json", progress.rows)
    write_json(reports / "val_curve.json", [{"step": s, "val_loss": v} for s, v in lm.val_history])

    numeric = {f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    mlflow_client.log_batch(run_id, metrics=_metrics(numeric, trainer.global_step))
    for artifact in (paths.params, paths.spm_model, paths.tokens_meta, reports / "metrics.json"):
        mlflow_client.log_artifact(run_id, str(artifact), artifact_path="train")
    progress.close()
    mlflow_client.set_terminated(run_id, status="FINISHED")
    tracking.write_run_json(paths, run_id, cfg.base.experiment, tracking.tracking_uri(paths))
    write_json(paths.models_dir / "last.json", {"fingerprint": resume_fingerprint(cfg, meta), "run_id": run_id, "complete": True})
    print(
        f"train: {trainer.global_step} steps, val loss {best_loss:.4f}, val bits/byte {bits_per_byte:.4f}, "
        f"{metrics['tokens_per_s']:.0f} tokens/s ({precision}, {device.name}); stopped by {metrics['stopped_by']}"
    )
    return metrics


def _metrics(values: dict, step: int):
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def _stop_reason(trainer, cfg: Config) -> str:
    if cfg.train.max_steps and trainer.global_step >= cfg.train.max_steps:
        return "max_steps"
    early = next((c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"), None)
    if early is not None and early.wait_count >= early.patience:
        return "early_stopping"
    timer = next((c for c in trainer.callbacks if type(c).__name__ == "Timer"), None)
    if timer is not None and cfg.train.max_minutes and timer.time_elapsed("train") >= cfg.train.max_minutes * 60 - 1:
        return "max_minutes"
    return "max_epochs"
