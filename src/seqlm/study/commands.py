"""`seqlm study` (`make study`): the study run end to end, and its command line.

Every experiment of the plan is queued with ``dvc exp run --queue -S …`` and the queue is run with
``dvc queue start -j 2``: two experiments side by side, one thread each (``queue.worker_env``); the
study runs as queued DVC experiments (docs/architecture.md, decision 12). Each is one MLflow run in the
study's MLflow experiment (``base.experiment``), tagged ``seqlm.study``. The register stage is not run:
study models are measurements, not candidates for serving, so they never meet the champion gate and add
no versions to the registry. docs/study.md is then written from the experiments' own reports. Across
several machines (``shards``), each runs ``run_study`` with ``--shard I/N`` and pushes its experiments, and
``collect_study`` (``--collect``) pulls them all and writes the one report.
Owns ``run_study`` and ``collect_study`` (that orchestration), ``cli_study`` and ``add_arguments`` (the
`seqlm study` command).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import time
from dataclasses import replace

from seqlm.core.errors import SeqlmError
from seqlm.core.git import git
from seqlm.core.paths import Paths
from seqlm.study import budget, collect, queue, report, shard_records, shards, tuning
from seqlm.study.plan import (
    FAMILIES,
    PROBE_FAMILIES,
    Experiment,
    Options,
    check_comparable,
    comparable,
    plan,
    preset,
)


def run_study(
    paths: Paths,
    options: Options,
    dry_run: bool = False,
    shard: shards.Shard | None = None,
    git_remote: str = "origin",
) -> list[Experiment]:
    """Plan, queue and run the study's experiments, then write docs/study.md; with ``dry_run``, only
    print the experiments and the dvc commands. With ``shard``, only that part of the plan runs, and its
    experiments are pushed for ``collect_study`` instead of reported."""
    import yaml

    started = time.time()
    params = yaml.safe_load(paths.params.read_text(encoding="utf-8"))
    if shard:
        shards.check_stamp(options.stamp, "--shard")
    if not options.stamp:
        options = replace(options, stamp=dt.datetime.now().strftime("%m%d%H%M"))
    if options.tune:  # its own seeds, kept apart from the reported ones
        options = replace(options, seeds=len(tuning.TUNING_SEEDS))
        experiments = tuning.tuning_plan(options, params)
    else:
        if not options.probe_lrs:  # the rates `seqlm study --tune` chose, if it has run
            options = replace(options, probe_lrs=tuning.rates(tuning.read(paths.root)))
        experiments = plan(options, params)
    check_comparable(comparable(experiments))
    if shard:
        experiments = shards.partition(experiments, shard.count)[shard.index - 1]
    where = f"shard {shard}: " if shard else ""
    print(f"study: {where}{budget.summary(experiments, options, preset(options.preset))}", flush=True)
    copies = queue.untracked_sources(paths)
    commands = [queue.queue_command(e, copies) for e in experiments] + [queue.start_queue(options.jobs)]
    if shard:  # checked in a dry run too: it is how a machine is checked before the study
        shards.preflight(paths, git_remote, "--shard")
        shards.check_committed(paths)
    if dry_run:
        for e in experiments:
            print(
                f"# {e.name}: {e.label or e.family}, {e.parameters:,} parameters, about "
                f"{budget.training_minutes(e):.1f} min of training"
            )
        print("\n".join(" ".join(shlex.quote(a) for a in c) for c in commands))
        return experiments
    if copies:
        print(
            f"study: warning: untracked {', '.join(copies)} copied into the experiments with -C; commit them "
            "so the experiments' commits record them"
        )
    queue.check_empty(paths)
    experiment = _prepare_store(paths, options.name)
    baseline = git(paths.root, "rev-parse", "HEAD") or ""
    record = shard_records.open_record(paths, options, shard, baseline, experiment) if shard else None
    load, done = _queue_and_wait(paths, options, experiments, commands)
    if shard:
        _finish_shard(paths, options, shard, git_remote, record, experiments, done, (baseline, started, load))
    elif options.tune:
        _write_tuning(paths, options, experiments, baseline, started)
    else:
        _write_report(paths, options, experiments, baseline, started, load)
    return experiments


def _write_tuning(
    paths: Paths, options: Options, experiments: list[Experiment], baseline: str, started: float
) -> None:
    results = collect.collect(paths, options, experiments, baseline, started)
    chosen = tuning.choose([r for r in results if r.status == "success"])
    path = tuning.write(paths.root, chosen, options, baseline)
    rates = ", ".join(f"{family} {entry['lr']:g}" for family, entry in sorted(chosen.items()))
    print(f"study: wrote {path.relative_to(paths.root)} ({rates}); commit it, then run `seqlm study`")


def _finish_shard(
    paths: Paths,
    options: Options,
    shard: shards.Shard,
    git_remote: str,
    record: str,
    experiments: list[Experiment],
    done: dict[str, str],
    run: tuple[str, float, list[float]],
) -> None:
    """Push the shard's experiments, then close its record: a finished record means they are pushed."""
    baseline, started, load = run
    succeeded = [e.name for e in experiments if done.get(e.name) == "Success"]
    failures = {e.name: collect.failure(paths, e.name) for e in experiments if e.name not in succeeded}
    shards.push(paths, git_remote, succeeded)
    machine = collect.machine_info(paths, baseline, started, time.time(), load)
    outcome = {"experiments": [e.name for e in experiments], "succeeded": succeeded, "failures": failures}
    shard_records.close_record(paths, record, options, shard, machine, outcome, started)
    print(
        f"study: shard {shard} done: {len(succeeded)} of {len(experiments)} experiments pushed to "
        f"{git_remote}; once every shard is done, on any machine: "
        f"seqlm study --collect --stamp {options.stamp}",
        flush=True,
    )


def collect_study(paths: Paths, name: str, stamp: str, git_remote: str = "origin") -> list[Experiment]:
    """Pull every shard's experiments of the study ``stamp`` and write docs/study.md from all of them."""
    import yaml

    shards.check_stamp(stamp, "--collect")
    shards.preflight(paths, git_remote, "--collect")
    records = shard_records.read_records(paths, name, stamp)
    options = shard_records.options_of(records[0])
    baseline = records[0]["machine"]["commit"]
    head = git(paths.root, "rev-parse", "HEAD") or ""
    if head != baseline:
        raise SeqlmError(
            f"--collect: the shards of stamp {stamp} ran commit {baseline[:12]}, this clone is at "
            f"{head[:12]}; "
            f"check it out (`git fetch {git_remote} && git checkout {baseline[:12]}`) and collect again"
        )
    planned = [n for r in records for n in r["experiments"]]
    experiments = plan(options, yaml.safe_load(paths.params.read_text(encoding="utf-8")))
    if sorted(e.name for e in experiments) != sorted(planned):
        raise SeqlmError(
            f"--collect: params.yaml here plans other experiments than the shards of stamp {stamp} ran; "
            "restore it (`git checkout params.yaml`) and collect again"
        )
    shards.pull(paths, git_remote, [n for r in records for n in r["succeeded"]])
    failures = {k: v for r in records for k, v in r["failures"].items()}
    started = min(r["started_s"] for r in records)
    results = collect.collect(paths, options, experiments, baseline, started, failures)
    machine = shard_records.machine_summary(records)
    report.write(paths.root / "docs", results, machine, options)
    print(
        f"study: wrote docs/study.md from {len(records)} shards ({machine['wall_minutes']:.1f} min from the "
        f"first start to the last finish, {len(experiments)} experiments)"
    )
    return experiments


def _prepare_store(paths: Paths, experiment: str) -> str:
    """Create the MLflow store and the study's experiment now: experiments running side by side would
    otherwise race to create both (and one would fail). The experiment's id."""
    from seqlm.tracking.store import check_reachable, connect, experiment_id, tracking_uri

    uri = tracking_uri(paths)
    check_reachable(uri)
    return experiment_id(connect(uri), experiment, paths)


def _queue_and_wait(
    paths: Paths, options: Options, experiments: list[Experiment], commands: list[list[str]]
) -> tuple[list[float], dict[str, str]]:
    """Queue every experiment, start the queue and wait for all of them; the load averages seen and each
    experiment's end (Success or Failed).

    The longest experiments are queued first (DVC runs the queue in order): two workers then finish
    together instead of one running the last long experiment alone.
    """
    longest_first = sorted(zip(experiments, commands), key=lambda ec: -budget.training_minutes(ec[0]))
    for e, command in longest_first:
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
    done = queue.wait_for(paths, names, options.jobs, load)  # a failed experiment is reported, not raised
    return load, done


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
    paths, options = Paths.from_env(), options_from(args)
    if options.tune and (args.collect or args.shard):
        raise SeqlmError("--tune runs on one machine (60 probe runs): give it without --shard and --collect")
    if args.collect:
        if args.shard or args.dry_run:
            raise SeqlmError(
                "--collect gathers every shard's experiments: give it without --shard and --dry-run"
            )
        collect_study(paths, options.name, options.stamp, args.git_remote)
        return
    shard = shards.parse_shard(args.shard) if args.shard is not None else None
    run_study(paths, options, dry_run=args.dry_run, shard=shard, git_remote=args.git_remote)


def options_from(args) -> Options:
    """The preset (--quick, --gpu or the full study), then every option given on the command line."""
    name = "quick" if args.quick else ("gpu" if args.gpu else "full")
    given = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in vars(args).items()
        if key in Options.__dataclass_fields__ and value is not None
    }
    return preset(name, **given)


def add_arguments(p) -> None:
    """The `seqlm study` options on the argparse parser ``p``; unset options take the preset's value."""
    d, q = Options(), preset("quick")
    p.add_argument("--name", help=f"MLflow experiment and seqlm.study tag (default {d.name})")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a first look in under 20 minutes: {q.seeds} seed, delays {' '.join(map(str, q.delays))}, "
        f"{q.probe_steps} probe updates, {q.text_tokens:,} training tokens per text experiment",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="bigger models, longer delays and more updates, on a GPU (train.accelerator gpu)",
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="choose each probe family's learning rate over one grid on seeds kept apart from the reported "
        "ones and write docs/study/probe_lr.json, which `seqlm study` then reads",
    )
    p.add_argument("--seeds", type=int, help=f"seeds per cell (default {d.seeds}; --quick {q.seeds})")
    p.add_argument(
        "--text-tokens",
        type=int,
        help=f"training tokens of every text experiment, the same for each family, rounded up to whole "
        f"updates (default {d.text_tokens:,}); the dry run prints the minutes each family takes",
    )
    p.add_argument(
        "--probe-steps",
        type=int,
        help=f"updates of each copy-probe experiment, every family alike (default {d.probe_steps})",
    )
    p.add_argument(
        "--explode-minutes",
        type=float,
        help=f"train.max_minutes of each explosion experiment (default {d.explode_minutes:g})",
    )
    p.add_argument(
        "--explode-gains",
        type=float,
        nargs="+",
        metavar="GAIN",
        help="W_hh spectral radii of the explosion grid (default "
        + " ".join(f"{g:g}" for g in d.explode_gains)
        + f"; --quick {' '.join(f'{g:g}' for g in q.explode_gains)})",
    )
    p.add_argument(
        "--explode-clips",
        type=float,
        nargs="+",
        metavar="CLIP",
        help="train.grad_clip thresholds of the explosion grid, 0 unclipped (default "
        + " ".join(f"{c:g}" for c in d.explode_clips)
        + f"; --quick {' '.join(f'{c:g}' for c in q.explode_clips)})",
    )
    p.add_argument(
        "--cloze-matched",
        action=argparse.BooleanOptionalAction,
        help="train the size-matched left-to-right LSTM beside the BiLSTM (default on; --quick off)",
    )
    p.add_argument(
        "--cloze-minutes",
        type=float,
        help=f"train.max_minutes of each cloze experiment (default {d.cloze_minutes:g})",
    )
    p.add_argument(
        "--delays",
        type=int,
        nargs="+",
        help="copy-probe delays (default " + " ".join(map(str, d.delays)) + ")",
    )
    p.add_argument(
        "--text-families",
        nargs="*",
        choices=list(FAMILIES),
        metavar="FAMILY",
        help="families trained on the text corpus (default " + " ".join(d.text_families) + ")",
    )
    p.add_argument(
        "--probe-families",
        nargs="*",
        choices=list(FAMILIES),
        metavar="FAMILY",
        help="families trained on the copy probe (default " + " ".join(PROBE_FAMILIES) + ")",
    )
    p.add_argument(
        "--jobs", type=int, help=f"experiments run side by side, one thread each (default {d.jobs})"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan, its time estimate and the dvc commands; run nothing (with --shard, check the "
        "remotes and the server too)",
    )
    p.add_argument(
        "--stamp",
        help="suffix of every experiment name (default: the month, day, hour and minute); with --shard and "
        "--collect, the same on every machine",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run only the I-th of N parts of the plan (balanced by estimated minutes), then `dvc exp push` "
        "its experiments; every machine needs the same commit, options and --stamp, and "
        "MLFLOW_TRACKING_URI set to one shared server (docs/study-design.md, Several machines)",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="after every shard of --stamp is done: `dvc exp pull` their experiments and write docs/study.md "
        "from all of them",
    )
    p.add_argument(
        "--git-remote",
        default="origin",
        help="the shared git remote that --shard pushes to and --collect pulls from (default origin)",
    )
