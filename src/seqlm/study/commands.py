"""`seqlm study` (`make study`): the study run end to end, and its command line.

Every experiment of the plan is queued with ``dvc exp run --queue -S …`` and the queue is run with
``dvc queue start -j 2``: two experiments side by side, one thread each (``queue.worker_env``); the
study runs as queued DVC experiments (docs/architecture.md, decision 12). Each is one MLflow run in the
study's MLflow experiment (``base.experiment``), tagged ``seqlm.study``. The register stage is not run:
study models are measurements, not candidates for serving, so they never meet the champion gate and add
no versions to the registry. docs/study.md is then written from the experiments' own reports.
Owns ``run_study`` (that orchestration), ``cli_study`` and ``add_arguments`` (the `seqlm study` command).
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import time
from dataclasses import replace

from seqlm.core.git import git
from seqlm.core.paths import Paths
from seqlm.study import collect, queue, report
from seqlm.study.plan import FAMILIES, PROBE_FAMILIES, Experiment, Options, check_comparable, plan


def run_study(paths: Paths, options: Options, dry_run: bool = False) -> list[Experiment]:
    """Plan, queue and run the study's experiments, then write docs/study.md; with ``dry_run``, only
    print the experiments and the dvc commands."""
    import yaml

    started = time.time()
    params = yaml.safe_load(paths.params.read_text(encoding="utf-8"))
    if not options.stamp:
        options = replace(options, stamp=dt.datetime.now().strftime("%m%d%H%M"))
    experiments = plan(options, params)
    check_comparable(experiments)
    copies = queue.untracked_sources(paths)
    commands = [queue.queue_command(e, copies) for e in experiments] + [queue.start_queue(options.jobs)]
    if dry_run:
        for e in experiments:
            print(f"# {e.name}: {e.family}, {e.parameters:,} parameters")
        print("\n".join(" ".join(shlex.quote(a) for a in c) for c in commands))
        return experiments
    if copies:
        print(
            f"study: warning: untracked {', '.join(copies)} copied into the experiments with -C; commit them "
            "so the experiments' commits record them"
        )
    queue.check_empty(paths)
    _prepare_store(paths, options.name)
    baseline = git(paths.root, "rev-parse", "HEAD") or ""
    load = _queue_and_wait(paths, options, experiments, commands)
    _write_report(paths, options, experiments, baseline, started, load)
    return experiments


def _prepare_store(paths: Paths, experiment: str) -> None:
    """Create the MLflow store and the study's experiment now: experiments running side by side would
    otherwise race to create both (and one would fail)."""
    from seqlm.tracking.store import check_reachable, connect, experiment_id, tracking_uri

    uri = tracking_uri(paths)
    check_reachable(uri)
    experiment_id(connect(uri), experiment, paths)


def _queue_and_wait(
    paths: Paths, options: Options, experiments: list[Experiment], commands: list[list[str]]
) -> list[float]:
    """Queue every experiment, start the queue and wait for all of them; the load averages seen."""
    for e, command in zip(experiments, commands):
        print(f"study: queue {e.name} ({e.parameters:,} parameters)", flush=True)
        queue.run_locked(command, paths)
    print(
        f"study: running {len(experiments)} experiments, {options.jobs} at a time; `dvc queue logs <name>` "
        "follows one",
        flush=True,
    )
    queue.run_locked(queue.start_queue(options.jobs), paths, env=queue.worker_env())
    load: list[float] = []
    names = [e.name for e in experiments]
    queue.wait_for(paths, names, options.jobs, load)  # a failed experiment is reported, not raised
    return load


def _write_report(
    paths: Paths,
    options: Options,
    experiments: list[Experiment],
    baseline: str,
    started: float,
    load: list[float],
) -> None:
    results = collect.collect(paths, options, experiments, baseline, started)
    finished = time.time()
    machine = collect.machine_info(paths, baseline, started, finished, load)
    report.write(paths.root / "docs", results, machine, options)
    print(
        f"study: wrote docs/study.md ({(finished - started) / 60:.1f} min for {len(experiments)} experiments)"
    )


def cli_study(args) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    options = Options(
        name=args.name,
        text_minutes=args.text_minutes,
        probe_minutes=args.probe_minutes,
        delays=tuple(args.delays),
        text_families=tuple(args.text_families),
        probe_families=tuple(args.probe_families),
        jobs=args.jobs,
    )
    run_study(Paths.from_env(), options, dry_run=args.dry_run)


def add_arguments(p) -> None:
    """The `seqlm study` options on the argparse parser ``p``."""
    d = Options()
    p.add_argument("--name", default=d.name, help=f"MLflow experiment and seqlm.study tag (default {d.name})")
    p.add_argument(
        "--text-minutes",
        type=float,
        default=d.text_minutes,
        help=f"train.max_minutes of each text experiment (default {d.text_minutes:g})",
    )
    p.add_argument(
        "--probe-minutes",
        type=float,
        default=d.probe_minutes,
        help=f"train.max_minutes of each copy-probe experiment (default {d.probe_minutes:g})",
    )
    p.add_argument(
        "--delays",
        type=int,
        nargs="+",
        default=list(d.delays),
        help="copy-probe delays (default " + " ".join(map(str, d.delays)) + ")",
    )
    p.add_argument(
        "--text-families",
        nargs="*",
        default=list(d.text_families),
        choices=list(FAMILIES),
        metavar="FAMILY",
        help="families trained on the text corpus (default: all)",
    )
    p.add_argument(
        "--probe-families",
        nargs="*",
        default=list(d.probe_families),
        choices=list(FAMILIES),
        metavar="FAMILY",
        help="families trained on the copy probe (default " + " ".join(PROBE_FAMILIES) + ")",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=d.jobs,
        help=f"experiments run side by side, one thread each (default {d.jobs})",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the experiments and the dvc commands; run nothing"
    )
