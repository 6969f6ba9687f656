"""Each shard's record in the shared MLflow server, and what the collector reads back from them.

A shard opens its record before it runs: an MLflow run in the study's experiment, tagged with the stamp,
``seqlm.study.shard`` (``1/3``) and its plan's fingerprint (the commit, the options but ``jobs``, the number
of shards), so that a machine with another plan for the same stamp is refused. Once its experiments are
pushed it closes the record with an artifact: its machine, options, experiments and the failure line of
each failed one (a failed experiment has no ref to push, and the collector's queue has no log of it).
Owns the fingerprint, opening, closing and reading records, and the report's machines from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.study.plan import Options
from seqlm.study.shards import Shard, parse_shard

SHARD_TAG, PLAN_TAG, COMMIT_TAG = "seqlm.study.shard", "seqlm.study.plan", "seqlm.study.commit"
RECORD = "shard.json"  # the record's artifact: machine, options, experiments, failures


def fingerprint(options: Options, shard_count: int, commit: str) -> str:
    """What every shard of one study must share: the commit, the options (but how many run side by side,
    which is each machine's own) and the number of shards."""
    chosen = {k: v for k, v in dataclasses.asdict(options).items() if k != "jobs"}
    text = json.dumps({"commit": commit, "options": chosen, "shards": shard_count}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
