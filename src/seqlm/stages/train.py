"""The train stage: data/tokens → models/model/, models/run.json, reports/train/; resumes a cut run.

It opens the pipeline's MLflow run (decision 7 in docs/architecture.md), which evaluate and register
reopen by the id in models/run.json.
"""

from __future__ import annotations

import math

from seqlm.config import Config
from seqlm.core.atomic import remove, write_json
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.core.redact import redact_url
from seqlm.tracking.run import RunHandle
from seqlm.tracking.run_record import write_run_json
from seqlm.tracking.store import check_reachable, connect, experiment_id, tracking_uri
from seqlm.tracking.system import system_metrics
from seqlm.training.planner import apply as apply_plan


def run_train(cfg: Config, paths: Paths, fresh: bool = False) -> dict:
    uri = tracking_uri(paths)
    check_reachable(uri)

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from seqlm.training.trainer import sigterm_raises

    with sigterm_raises():
        try:
            return _train(cfg, paths, uri, fresh)
        except SIGTERMException:  # before the run was opened: nothing to mark or to resume
            raise SeqlmError("train: stopped by SIGTERM before training started; nothing was saved") from None


def _train(cfg: Config, paths: Paths, uri: str, fresh: bool) -> dict:
    import lightning.pytorch as pl
    import torch

    from seqlm.data.tokens import read_meta
    from seqlm.evaluation.protocols import for_training
    from seqlm.models import build_model
    from seqlm.tracking.metrics import send_unsent
    from seqlm.training import resume
    from seqlm.training.datamodule import TokenDataModule
    from seqlm.training.device import detect_device, resolve_precision
    from seqlm.training.lightning_module import LitLanguageModel
    from seqlm.training.trainer import agree_on_resume, build_trainer, callbacks, fit, run_ends_marked

    meta = read_meta(paths)
    device = detect_device(cfg.train.accelerator)
    precision = resolve_precision(cfg.train.precision, device)
    progress, best, callback_list = callbacks(cfg, paths)
    trainer = build_trainer(cfg, paths, precision, callback_list)
    # Lightning starts the other local ranks from inside fit, running this stage again: only rank 0
    # touches the resume state, opens the MLflow run and exports (decision 9, docs/architecture.md).
    rank0 = trainer.global_rank == 0
    fingerprint = resume.resume_fingerprint(cfg, meta, trainer.world_size)

    def decide():
        remove(paths.run_json)  # evaluate and register must never pair an older run with a newer model
        return resume.resume_point(paths, fingerprint, fresh)

    start = agree_on_resume(trainer, decide, lambda: resume.peek(paths, fingerprint, fresh))
    plan = None
    if cfg.train.plan == "auto":  # before seeding: the measurement's throwaway model draws no seeded numbers
        plan = _plan(cfg, paths, meta, device.kind, precision, trainer.world_size, start.ckpt_path, rank0)
        cfg = apply_plan(cfg, plan)

    pl.seed_everything(cfg.base.seed, workers=True, verbose=False)
    if device.kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(cfg.model, meta["vocab_size"], cfg.train.objective)
    protocol = for_training(cfg.train, cfg.base.seed)
    datamodule = TokenDataModule(
        paths, cfg.train.batch_size, cfg.train.bptt, cfg.train.variable_bptt, cfg.base.seed, protocol
    )
    windows = datamodule.split_windows("train", trainer.global_rank, trainer.world_size)
    total_steps = cfg.train.max_steps or cfg.train.max_epochs * windows
    lm = LitLanguageModel(model, cfg.train, meta["splits"]["valid"], total_steps, cfg.base.seed, protocol)

    run = None
    if rank0:
        client = connect(uri)
        experiment = experiment_id(client, cfg.base.experiment, paths)
        if start.run_id:
            run = RunHandle(client, start.run_id)
        else:
            run = _start_run(client, experiment, cfg, paths, device, precision, model, plan)
        progress.attach(run)
    with run_ends_marked(run, paths):
        if rank0 and start.run_id:
            run.client.update_run(run.run_id, status="RUNNING")
            if sent := send_unsent(run, paths.unsent_metrics):
                print(f"train: sent {sent} step metrics the tracking store missed before the interruption")
        if rank0:
            resume.record(paths, fingerprint, run.run_id, complete=False)
            _log_inputs(run, paths)  # MLflow keeps one input per dataset: a resumed run adds none

        # rank 0 alone samples, since only it holds the run (on several nodes, its node's machine)
        with system_metrics(run, cfg.train.system_metrics_seconds):
            fit(trainer, lm, datamodule, start.ckpt_path, paths, run, progress)
            if not lm.val_history or lm.val_history[-1][0] != trainer.global_step:
                trainer.validate(lm, datamodule=datamodule, verbose=False)

        if not rank0:
            return {}
        metrics = _metrics(cfg, trainer, lm, progress, precision) | _plan_metrics(plan)
        _export(paths, lm, best, meta, metrics, device, run.run_id)
        _write_reports(paths, metrics, progress, lm)
        _log_and_close(paths, run, metrics, progress, trainer.global_step)
        write_run_json(paths, run.run_id, cfg.base.experiment, uri)
        resume.record(paths, fingerprint, run.run_id, complete=True)
    score = protocol.score_name  # bits_per_byte, or bits_per_blank for cloze (decision 20)
    print(
        f"train: {metrics['steps']} steps, val loss {metrics['val_loss']:.4f}, "
        f"val {score.replace('_per_', '/')} {metrics['val_' + score]:.4f}, "
        f"{metrics['tokens_per_s']:.0f} tokens/s "
        f"({precision}, {device.name}); stopped by {metrics['stopped_by']}"
    )
    return metrics


def _plan(cfg: Config, paths: Paths, meta: dict, device_kind, precision, world_size, ckpt_path, rank0):
    """The budget plan: the resumed run's own, else from train.plan_tokens_per_s or a measurement."""
    import json

    from seqlm.models import build_model
    from seqlm.training import planner

    if ckpt_path and paths.last_plan.is_file():
        plan = planner.Plan(**json.loads(paths.last_plan.read_text()))
    else:
        tokens_per_s, source = cfg.train.plan_tokens_per_s, "given"
        if not tokens_per_s:
            if world_size > 1:  # each process would measure its own and could choose another plan
                raise SeqlmError(
                    "params.yaml: train.plan: auto with several processes needs train.plan_tokens_per_s "
                    "(the run's total tokens/s, e.g. from a short run's log), got 0"
                )
            probe = build_model(cfg.model, meta["vocab_size"], cfg.train.objective)
            tokens_per_s = planner.measure_tokens_per_s(
                probe,
                cfg.train.batch_size,
                cfg.train.bptt,
                meta["vocab_size"],
                precision,
                device_kind,
                cfg.train.loss_chunk_mb,
            )
            source = "measured"
        plan = planner.choose(
            tokens_per_s,
            meta["splits"]["train"]["tokens"],
            cfg.train.batch_size * cfg.train.bptt * world_size,
            cfg.train.max_minutes,
            cfg.train.max_steps,
            cfg.train.max_epochs,
            source,
        )
    if rank0:
        write_json(paths.last_plan, plan.to_dict())
        print(planner.describe(plan))
    return plan


def _plan_metrics(plan) -> dict:
    if plan is None:
        return {}
    return {
        "plan_regime": plan.regime,
        "plan_expected_epochs": plan.expected_epochs,
        "plan_tokens_per_s": plan.tokens_per_s,
        "plan_tokens_per_s_source": plan.tokens_per_s_source,
    }


def _start_run(client, experiment, cfg, paths, device, precision, model, plan) -> RunHandle:
    from mlflow.entities import Param

    from seqlm.tracking.lineage import lineage_tags

    tags = lineage_tags(paths)
    tags.update(
        {
            "device": device.name,
            "precision": precision,
            "model.family": cfg.model.family,
            "seqlm.stage": "train",
        }
    )
    # a presigned url: source must not leave its token in the tracking store
    params = [Param(k, redact_url(str(v))[:6000]) for k, v in cfg.flat().items()]
    params.append(Param("model.num_parameters", str(model.num_parameters())))
    params.append(Param("train.precision_resolved", precision))
    if plan is not None:  # cfg's model.* keys above are the plan's; these say why
        tags["plan.reason"] = plan.reason
        params += [
            Param("plan.regime", plan.regime),
            Param("plan.tokens_per_s", f"{plan.tokens_per_s:.0f}"),
            Param("plan.tokens_per_s_source", plan.tokens_per_s_source),
            Param("plan.expected_epochs", f"{plan.expected_epochs:.2f}"),
            Param("plan.train_tokens", str(plan.train_tokens)),
        ]
    return RunHandle.create(client, experiment, f"{cfg.model.family}-{cfg.model.hidden_size}", tags, params)


def _log_inputs(run: RunHandle, paths: Paths) -> None:
    """The corpus splits the tokens were made from, as the run's dataset inputs (their lineage)."""
    from seqlm.tracking.datasets import log_dataset_inputs

    if not log_dataset_inputs(run, paths):
        print(f"train: no split digests in {paths.manifest}; the run records no dataset inputs")


def perplexity(loss: float) -> float | None:
    """e^loss; None past float range (a run that blew up to a loss of 8e4 without going non-finite, as the
    study's provoked explosion does, is reported, not crashed on)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def _metrics(cfg: Config, trainer, lm, progress, precision: str) -> dict:
    from seqlm.training.trainer import solved, stop_reason

    if not lm.val_history or not math.isfinite(lm.best_val_loss):
        raise SeqlmError("training ended before any validation; raise train.max_minutes or train.max_steps")
    summary = progress.summary()
    # with train.stop_at_recall, whether the recall reached it: then steps are the updates to solve
    solved_flag = {} if (done := solved(trainer)) is None else {"solved": float(done)}
    # the best validation's score and the last validation's recall (the protocol's val_metrics)
    return {
        "objective": cfg.train.objective,
        "train_loss": summary["train_loss"],
        **lm.val_metrics(lm.best_val_loss),
        "val_token_perplexity": perplexity(lm.best_val_loss),
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "wall_seconds": summary["wall_seconds"],
        "fraction_clipped": summary["fraction_clipped"],
        "num_parameters": lm.model.num_parameters(),
        "precision": precision,
        "stopped_by": stop_reason(trainer, cfg),
        **solved_flag,
    }


def _export(paths: Paths, lm, best, meta: dict, metrics: dict, device, run_id: str) -> None:
    from seqlm.models import export

    training = {k: metrics[k] for k in ("val_loss", "val_" + lm.protocol.score_name, "steps", "precision")}
    info = {
        "tokenizer": {k: meta[k] for k in ("vocab_size", "dtype") if k in meta} | {"meta": meta},
        "training": training | {"device": device.name, "run_id": run_id},
    } | lm.protocol.export_info()
    weights = best.path if best.path.is_file() else None
    export.export(lm.model.cpu(), weights, paths.model_dir, paths.spm_model, info)


def _write_reports(paths: Paths, metrics: dict, progress, lm) -> None:
    write_json(paths.train_metrics, metrics)
    write_json(paths.train_curve, progress.rows)
    write_json(paths.val_curve, [{"step": s, "val_loss": v} for s, v in lm.val_history])


def _log_and_close(paths: Paths, run: RunHandle, metrics: dict, progress, step: int) -> None:
    from seqlm.tracking.metrics import metric_list

    numeric = {f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    run.log_metrics(metric_list(numeric, step))
    for artifact in (paths.params, paths.spm_model, paths.tokens_meta, paths.train_metrics):
        run.client.log_artifact(run.run_id, str(artifact), artifact_path="train")
    progress.close()
    run.client.set_terminated(run.run_id, status="FINISHED")
