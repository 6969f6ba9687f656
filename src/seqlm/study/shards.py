"""The study across several machines: each runs one shard of the plan and pushes its experiments; any
machine then collects them all (docs/study-design.md, "Several machines").

Every machine computes the same partition from the same commit and options (``partition``: longest first,
each experiment to the shard with the fewest estimated minutes so far), and the shared ``--stamp`` makes the
experiment names agree. Results travel the way a team already shares them: experiments by `dvc exp push` to
the git remote (their DVC-tracked outputs, metrics included, to the default DVC remote), MLflow runs to the
one tracking server every machine names in MLFLOW_TRACKING_URI. Each shard also leaves a record there: an
MLflow run tagged ``seqlm.study.shard`` holding its plan's fingerprint (a machine with another commit,
options or shard count is refused), and at the end its machine, its experiments and their failures, for
the collector and the report.

Owns ``Shard`` and ``parse_shard``, ``partition``, the checks before a shard starts (``preflight``), the
shard's record (``open_record``, ``close_record``, ``records``) and the `dvc exp push` / `pull` commands.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from seqlm.core.errors import SeqlmError
from seqlm.core.git import git
from seqlm.core.paths import Paths
from seqlm.study import budget
from seqlm.study.plan import Experiment, Options
from seqlm.study.queue import run_dvc

SHARD_TAG, PLAN_TAG, COMMIT_TAG = "seqlm.study.shard", "seqlm.study.plan", "seqlm.study.commit"
RECORD = "shard.json"  # the record's artifact: machine, options, experiments, failures
STAMP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")  # part of every experiment name, so of a git ref


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as the user writes it
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not found:
        raise SeqlmError(f"--shard {text}: expected I/N, the I-th of N parts of the plan (1/3, 2/3, 3/3)")
    index, count = int(found[1]), int(found[2])
    if not 1 <= index <= count:
        raise SeqlmError(f"--shard {text}: I must be between 1 and N, got {index} of {count}")
    return Shard(index, count)


def check_stamp(stamp: str, flag: str) -> None:
    if not stamp:
        raise SeqlmError(
            f"{flag} needs --stamp: every machine gives the same one so that experiment names agree "
            "(e.g. --stamp 0612a)"
        )
    if not STAMP.fullmatch(stamp):
        raise SeqlmError(f"--stamp {stamp!r}: use letters, digits and _ only (it ends every experiment name)")


def minutes(e: Experiment) -> float:
    return budget.training_minutes(e) + budget.OVERHEAD_MINUTES


def partition(experiments: list[Experiment], count: int) -> list[list[Experiment]]:
    """``count`` parts of about equal estimated minutes, each in plan order.

    Longest first, each to the part with the fewest minutes so far (ties: the lower part; equal
    experiments in name order), so every machine computes the same parts from the same plan.
    """
    if count > len(experiments):
        raise SeqlmError(
            f"--shard …/{count}: the plan has only {len(experiments)} experiments; use at most "
            f"{len(experiments)} shards"
        )
    loads, owner = [0.0] * count, {}
    for e in sorted(experiments, key=lambda e: (-minutes(e), e.name)):
        part = min(range(count), key=lambda k: (loads[k], k))
        owner[e.name] = part
        loads[part] += minutes(e)
    return [[e for e in experiments if owner[e.name] == part] for part in range(count)]


def fingerprint(options: Options, shard_count: int, commit: str) -> str:
    """What every shard of one study must share: the commit, the options (but how many run side by side,
    which is each machine's own) and the number of shards."""
    chosen = {k: v for k, v in dataclasses.asdict(options).items() if k != "jobs"}
    text = json.dumps({"commit": commit, "options": chosen, "shards": shard_count}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ before a shard runs


def preflight(paths: Paths, git_remote: str, flag: str) -> str:
    """The remotes and the server every machine shares, checked before anything runs; the tracking URI."""
    from seqlm.tracking.store import check_reachable, tracking_uri

    if git(paths.root, "remote", "get-url", git_remote) is None:
        raise SeqlmError(
            f"{flag}: no git remote {git_remote!r} in {paths.root}; add the shared repository "
            f"(`git remote add {git_remote} <url>`) or name another with --git-remote"
        )
    if run_dvc(["dvc", "remote", "default"], paths, capture=True).returncode != 0:
        raise SeqlmError(
            f"{flag}: no default DVC remote in {paths.root}; add the shared one "
            "(`dvc remote add -d shared <url or path>`) and commit .dvc/config"
        )
    uri = tracking_uri(paths)
    if not uri.startswith(("http://", "https://")):
        raise SeqlmError(
            f"{flag} needs the shared MLflow server: set MLFLOW_TRACKING_URI=http://<server>:<port> on every "
            f"machine (now {uri})"
        )
    check_reachable(uri)
    return uri


def check_committed(paths: Paths) -> None:
    if git(paths.root, "status", "--porcelain", "--untracked-files=no"):
        raise SeqlmError(
            "--shard: this clone has uncommitted changes to tracked files; commit and push them, so that "
            "every machine runs the same commit"
        )


# ------------------------------------------------------------------------------------ the shard's record


def _client(paths: Paths):
    from seqlm.tracking.store import connect, tracking_uri

    return connect(tracking_uri(paths))


def records(client, experiment: str, stamp: str, finished_only: bool = False) -> list:
    """The shard records of the study ``stamp`` in MLflow experiment ``experiment``, newest first."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.`seqlm.study.stamp` = '{stamp}'"
    runs = client.search_runs([found.experiment_id], query, max_results=5000, order_by=["start_time DESC"])
    runs = [r for r in runs if SHARD_TAG in r.data.tags]
    return [r for r in runs if r.info.status == "FINISHED"] if finished_only else runs


def open_record(paths: Paths, options: Options, shard: Shard, commit: str, experiment_id: str):
    """Refuse a shard whose plan differs from another shard's of the same stamp; else start its record."""
    client = _client(paths)
    mine = fingerprint(options, shard.count, commit)
    for other in records(client, options.name, options.stamp):
        tags = other.data.tags
        if tags.get(PLAN_TAG) != mine:
            raise SeqlmError(
                f"shard {shard} of stamp {options.stamp}: shard {tags[SHARD_TAG]} ran another plan (commit "
                f"{tags.get(COMMIT_TAG, '?')[:12]}, not {commit[:12]}, or other options or another shard "
                "count); give every machine the same commit, options and N, or use a new --stamp"
            )
    tags = {
        "seqlm.study": options.name,
        "seqlm.study.stamp": options.stamp,
        SHARD_TAG: str(shard),
        PLAN_TAG: mine,
        COMMIT_TAG: commit,
    }
    run = client.create_run(
        experiment_id, run_name=f"shard-{shard.index}of{shard.count}-{options.stamp}", tags=tags
    )
    return run.info.run_id


def close_record(
    paths: Paths, run_id: str, options: Options, shard: Shard, machine: dict, outcome: dict, started: float
) -> None:
    """The shard's machine, options and experiments (succeeded, failed with their failure line)."""
    client = _client(paths)
    record = {
        "shard": str(shard),
        "options": dataclasses.asdict(options),
        "machine": machine,
        "started_s": started,
        "finished_s": time.time(),
        **outcome,
    }
    client.log_text(run_id, json.dumps(record, indent=1), RECORD)
    client.set_terminated(run_id, "FINISHED")


def read_records(paths: Paths, experiment: str, stamp: str) -> list[dict]:
    """Every shard's finished record of the study ``stamp``, in shard order; one line if any is missing."""
    from seqlm.tracking.store import tracking_uri

    client = _client(paths)
    runs = records(client, experiment, stamp, finished_only=True)
    if not runs:
        raise SeqlmError(
            f"no finished shard of stamp {stamp} in MLflow experiment {experiment!r} at "
            f"{tracking_uri(paths)}; "
            "set MLFLOW_TRACKING_URI to the server the shards used, or run `seqlm study --shard I/N --stamp "
            f"{stamp}` first"
        )
    newest: dict[str, object] = {}
    for run in runs:  # newest first: a shard run again counts once, by its last record
        newest.setdefault(run.data.tags[SHARD_TAG], run)
    count = parse_shard(next(iter(newest))).count
    missing = [f"{i}/{count}" for i in range(1, count + 1) if f"{i}/{count}" not in newest]
    if missing or len(newest) != count:
        first = missing[0] if missing else sorted(newest)[0]
        raise SeqlmError(
            f"stamp {stamp}: shard {first} has not finished (of {len(newest)} recorded, {count} planned); "
            f"run `seqlm study --shard {first} --stamp {stamp}` with the same options, then collect again"
        )
    return [_record(client, newest[f"{i}/{count}"].info.run_id) for i in range(1, count + 1)]


def _record(client, run_id: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, RECORD, tmp)).read_text())


def options_of(record: dict) -> Options:
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in record["options"].items()}
    return Options(**{k: v for k, v in given.items() if k in Options.__dataclass_fields__})


# ------------------------------------------------------------------------------------ moving experiments


def push(paths: Paths, git_remote: str, names: list[str]) -> None:
    """The experiments' git refs to ``git_remote``, their DVC-tracked outputs to the default DVC remote."""
    _exp(paths, "push", git_remote, names)


def pull(paths: Paths, git_remote: str, names: list[str]) -> None:
    _exp(paths, "pull", git_remote, names)


def _exp(paths: Paths, verb: str, git_remote: str, names: list[str]) -> None:
    if not names:
        return
    out = run_dvc(["dvc", "exp", verb, "--force", git_remote, *names], paths, capture=True)
    print((out.stdout + out.stderr).strip(), flush=True)
    if out.returncode != 0:
        raise SeqlmError(
            f"`dvc exp {verb} {git_remote}` of {len(names)} experiments failed; see DVC's message above, "
            f"then run it again by hand (`dvc exp {verb} {git_remote} {names[0]} …`)"
        )


def machine_summary(records: list[dict]) -> dict:
    """One ``machine`` for the report from every shard's: shared values once, differing ones joined, the
    dates and minutes from the first start to the last finish, and each shard's own line in ``shards``."""
    machines = [r["machine"] for r in records]
    summary = {}
    for key in machines[0]:
        values = list(dict.fromkeys(str(m.get(key)) for m in machines))
        summary[key] = machines[0][key] if len(values) == 1 else " / ".join(values)
    started = min(r["started_s"] for r in records)
    finished = max(r["finished_s"] for r in records)
    summary["started"] = min(m["started"] for m in machines)
    summary["finished"] = max(m["finished"] for m in machines)
    summary["wall_minutes"] = (finished - started) / 60
    summary["dirty"] = any(m.get("dirty") for m in machines)
    loads = [m["load_mean"] for m in machines if m.get("load_mean") is not None]
    summary["load_mean"] = sum(loads) / len(loads) if loads else None
    peaks = [m["load_max"] for m in machines if m.get("load_max") is not None]
    summary["load_max"] = max(peaks) if peaks else None
    gpus = list(dict.fromkeys(m.get("gpu") or "no GPU" for m in machines))
    summary["gpu"] = None if gpus == ["no GPU"] else " / ".join(gpus)
    summary["shards"] = [
        {
            "shard": r["shard"],
            "host": r["machine"].get("host", "?"),
            "cpu": r["machine"]["cpu"],
            "cores": r["machine"]["cores"],
            "gpu": r["machine"].get("gpu"),
            "experiments": len(r["experiments"]),
            "failed": len(r["failures"]),
            "wall_minutes": r["machine"]["wall_minutes"],
        }
        for r in records
    ]
    return summary


def describe(machine: dict) -> str:
    """The report's line on the machines of a study run in shards; "" for a study run on one machine."""
    parts = machine.get("shards")
    if not parts:
        return ""
    each = "; ".join(
        f"{s['shard']} on `{s['host']}` ({s['cpu']}, {s['cores']} cores, {s['gpu'] or 'no GPU'}): "
        f"{s['experiments']} experiments, {s['failed']} failed, {s['wall_minutes']:.1f} min"
        for s in parts
    )
    return (
        f"**Machines:** {len(parts)}, one shard each (`seqlm study --shard I/{len(parts)}`), collected with "
        f"`seqlm study --collect`: {each}.  \n"
    )
