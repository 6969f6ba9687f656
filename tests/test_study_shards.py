"""`seqlm study --shard I/N` and `--collect`: the study across several machines.

The partition (deterministic, complete, balanced by estimated minutes), the refusals (a bad --shard, no
stamp, no git remote, no DVC remote, no shared server, shards that disagree or have not finished), the
report's line on the machines, and the whole path on one machine with two clones: a bare git repository
as the shared git remote, a folder as the shared DVC remote and a real `mlflow server` as the shared
tracking server; shard 1/2 runs in one clone, shard 2/2 in the other, and the first collects both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from seqlm_testing import QUICK_EVALUATE, REPO
from team_stack import sqlite_server

from seqlm import cli
from seqlm.core.errors import SeqlmError
from seqlm.study import budget, shard_records, shards
from seqlm.study import plan as planning

# The smallest plan: the explosion pair and the cloze pair (no text or probe families), 3 s of training each
TINY_PLAN = ["--quick", "--text-families", "--probe-families", "--explode-minutes", "0.05", "--cloze-minutes"]
TINY_PLAN += ["0.05"]


@pytest.fixture(scope="module")
def full_plan() -> list[planning.Experiment]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return planning.plan(planning.preset("full", stamp="s1"), params)


def test_the_shards_cover_the_plan_once_and_balance_its_minutes(full_plan):
    parts = shards.partition(full_plan, 3)
    names = [e.name for part in parts for e in part]
    assert sorted(names) == sorted(e.name for e in full_plan)  # every experiment, in exactly one shard
    assert parts == shards.partition(list(full_plan), 3)  # every machine computes the same parts
    order = {e.name: i for i, e in enumerate(full_plan)}
    assert all([order[e.name] for e in part] == sorted(order[e.name] for e in part) for part in parts)
    loads = [sum(shards.minutes(e) for e in part) for part in parts]
    assert max(loads) - min(loads) <= max(shards.minutes(e) for e in full_plan)
    # balanced by minutes, not by count: the shard with the longest experiment holds no more than its share
    total = budget.estimate_minutes(full_plan, 1)
    assert max(loads) < total / 3 * 1.05


def test_a_shard_count_beyond_the_plan_is_refused(full_plan):
    with pytest.raises(SeqlmError, match=f"only {len(full_plan[:4])} experiments; use at most 4 shards"):
        shards.partition(full_plan[:4], 5)


SHARD = ["study", "--dry-run", *TINY_PLAN]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [*SHARD, "--shard", "3/2", "--stamp", "s"],
            "error: --shard 3/2: I must be between 1 and N, got 3 of 2",
        ),
        ([*SHARD, "--shard", "x", "--stamp", "s"], "error: --shard x: expected I/N, the I-th of N parts"),
        (
            [*SHARD, "--shard", "0/2", "--stamp", "s"],
            "error: --shard 0/2: I must be between 1 and N, got 0 of 2",
        ),
        ([*SHARD, "--shard", "1/2"], "error: --shard needs --stamp: every machine gives the same one"),
        (
            [*SHARD, "--shard", "1/2", "--stamp", "a b"],
            "error: --stamp 'a b': use letters, digits and _ only",
        ),
        (["study", "--collect"], "error: --collect needs --stamp: every machine gives the same one"),
        (["study", "--collect", "--shard", "1/2"], "error: --collect gathers every shard's experiments"),
    ],
)
def test_bad_shard_options_get_one_line(project, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _dvc(root: Path, *args: str) -> None:
    subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=root, check=True, capture_output=True
    )


def test_a_shard_without_the_shared_remotes_and_server_is_refused_before_it_runs(
    project, capsys, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shard = [*SHARD, "--shard", "1/2", "--stamp", "s"]
    _git(project.root, "init", "-q")
    assert cli.main(shard) == 2
    assert "error: --shard: no git remote 'origin' in" in capsys.readouterr().err
    _git(project.root, "remote", "add", "origin", str(project.root / "shared.git"))
    _dvc(project.root, "init", "-q")
    assert cli.main(shard) == 2
    assert "error: --shard: no default DVC remote in" in capsys.readouterr().err
    _dvc(project.root, "remote", "add", "-d", "shared", str(project.root / "dvc-remote"))
    assert cli.main(shard) == 2
    err = capsys.readouterr().err
    assert "error: --shard needs the shared MLflow server: set MLFLOW_TRACKING_URI=http://" in err
    assert cli.main(["study", "--collect", "--stamp", "s"]) == 2  # the collector needs the same
    assert "error: --collect needs the shared MLflow server" in capsys.readouterr().err


@pytest.mark.slow  # a fresh MLflow sqlite store: seconds of migrations
def test_shards_of_one_stamp_must_share_a_plan_and_all_finish_before_collecting(project):
    from seqlm.tracking.store import connect, experiment_id, tracking_uri

    options = planning.preset("quick", stamp="s2")
    paths = project.paths()
    exp_id = experiment_id(connect(tracking_uri(paths)), options.name, paths)
    first = shard_records.open_record(paths, options, shards.Shard(1, 2), "c" * 40, exp_id)
    with pytest.raises(SeqlmError, match="shard 2/2 of stamp s2: shard 1/2 ran another plan"):
        shard_records.open_record(paths, replace(options, seeds=2), shards.Shard(2, 2), "c" * 40, exp_id)
    with pytest.raises(SeqlmError, match="ran another plan .commit cccccccccccc, not dddddddddddd"):
        shard_records.open_record(paths, options, shards.Shard(2, 2), "d" * 40, exp_id)
    shard_records.open_record(paths, replace(options, jobs=1), shards.Shard(2, 2), "c" * 40, exp_id)
    with pytest.raises(SeqlmError, match="no finished shard of stamp s2"):
        shard_records.read_records(paths, options.name, "s2")
    machine = {"cpu": "x", "cores": 2, "commit": "c" * 40, "started": "a", "finished": "b", "wall_minutes": 1}
    outcome = {"experiments": ["e1"], "succeeded": ["e1"], "failures": {}}
    shard_records.close_record(paths, first, options, shards.Shard(1, 2), machine, outcome, 0.0)
    with pytest.raises(SeqlmError, match=r"stamp s2: shard 2/2 has not finished .*--shard 2/2 --stamp s2"):
        shard_records.read_records(paths, options.name, "s2")


def test_the_report_names_every_shards_machine():
    def record(shard: str, cpu: str, gpu, started: float, minutes: float, failures: dict) -> dict:
        machine = {
            "host": f"host-{shard[0]}",
            "cpu": cpu,
            "cores": 16,
            "gpu": gpu,
            "commit": "c" * 40,
            "started": f"2026-01-01T00:0{int(started)}:00+00:00",
            "finished": "x",
            "wall_minutes": minutes,
            "load_mean": 1.0,
            "load_max": 2.0,
            "dirty": False,
        }
        names = ["a", "b"]
        return {
            "shard": shard,
            "machine": machine,
            "started_s": started * 60,
            "finished_s": (started + minutes) * 60,
            "experiments": names,
            "succeeded": names,
            "failures": failures,
        }

    records = [record("1/2", "EPYC", None, 0, 10, {}), record("2/2", "Xeon", "H200", 2, 4, {"b": {}})]
    machine = shard_records.machine_summary(records)
    assert machine["cpu"] == "EPYC / Xeon" and machine["cores"] == 16 and machine["gpu"] == "no GPU / H200"
    assert machine["wall_minutes"] == pytest.approx(10) and machine["started"].startswith("2026-01-01T00:00")
    line = shard_records.describe(machine)
    assert line.startswith("**Machines:** 2, one shard each (`seqlm study --shard I/2`)")
    assert "1/2 on `host-1` (EPYC, 16 cores, no GPU): 2 experiments, 0 failed, 10.0 min" in line
    assert "2/2 on `host-2` (Xeon, 16 cores, H200): 2 experiments, 1 failed, 4.0 min" in line
    assert shard_records.describe({"cpu": "one machine"}) == ""


# --------------------------------------------------------------------------- two clones, one machine


def _tracked_files(dest: Path) -> None:
    """The project as a fresh clone would hold it (tracked files and new ones not ignored), tiny params."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file() and not name.startswith("docs/study"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for dotted, value in (QUICK_EVALUATE | {"tokenizer.vocab_size": 500}).items():
        section, key = dotted.split(".")
        params[section][key] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def tracking_server(tmp_path):
    with sqlite_server(tmp_path / "server") as url:
        yield url


@pytest.mark.slow
@pytest.mark.services  # a real `mlflow server`, two clones, five queued DVC experiments: minutes on 2 cores
def test_two_clones_run_one_shard_each_and_either_collects_the_whole_study(tmp_path, tracking_server):
    venv_bin = Path(sys.executable).parent
    env = os.environ | {
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": tracking_server,
        "GIT_AUTHOR_NAME": "seqlm",
        "GIT_AUTHOR_EMAIL": "seqlm@example.invalid",
        "GIT_COMMITTER_NAME": "seqlm",
        "GIT_COMMITTER_EMAIL": "seqlm@example.invalid",
    }
    env.pop("SEQLM_ROOT", None)
    shared, seed = tmp_path / "shared.git", tmp_path / "seed"
    seed.mkdir()
    _tracked_files(seed)
    _run(["git", "init", "-q", "--bare", "-b", "main", str(shared)], tmp_path, env)
    _run(["git", "init", "-q", "-b", "main"], seed, env)
    _run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], seed, env)
    _run(["git", "add", "-A"], seed, env)
    _run(["git", "commit", "-qm", "the project, with the team's DVC remote"], seed, env)
    _run(["git", "push", "-q", str(shared), "main"], seed, env)
    clones = {}
    for name in ("a", "b"):
        _run(["git", "clone", "-q", str(shared), name], tmp_path, env)
        clones[name] = tmp_path / name
    study = [sys.executable, "-m", "seqlm.cli", "study", *TINY_PLAN, "--stamp", "two"]

    out_a = _run([*study, "--shard", "1/2"], clones["a"], env)
    out_b = _run([*study, "--shard", "2/2"], clones["b"], env)
    collected = _run(
        [sys.executable, "-m", "seqlm.cli", "study", "--collect", "--stamp", "two"], clones["a"], env
    )

    params = yaml.safe_load((clones["a"] / "params.yaml").read_text())
    options = planning.preset("quick", stamp="two", text_families=(), probe_families=())
    planned = planning.plan(replace(options, explode_minutes=0.05, cloze_minutes=0.05), params)
    parts = [{e.name for e in part} for part in shards.partition(planned, 2)]
    assert len(planned) == 4 and [len(p) for p in parts] == [2, 2]
    for out, part, shard in ((out_a, parts[0], "1/2"), (out_b, parts[1], "2/2")):
        assert f"study: shard {shard}: {len(part)} experiments" in out, out
        assert f"study: shard {shard} done:" in out and "seqlm study --collect --stamp two" in out
    assert "study: wrote docs/study.md from 2 shards" in collected, collected

    report = (clones["a"] / "docs" / "study.md").read_text()
    assert "**Machines:** 2, one shard each" in report and "1/2 on `" in report and "2/2 on `" in report
    every = report[report.index("## Every experiment") :].splitlines()
    rows = {cells[1].strip(" `"): cells for line in every if len(cells := line.split("|")) == 9}
    assert set(rows) >= {e.name for e in planned}
    for e in planned:  # every result came back; only the provoked explosion may fail, as its own outcome
        status, note = rows[e.name][3].strip(), rows[e.name][7]
        assert status == "ok" or (e.cell == "explode-g3-c0" and status in ("diverged", "failed")), rows
        # a failed experiment's line is its shard's queue log, not a result lost between machines
        assert status == "ok" or ("dvc exp pull" not in note and "did not finish" not in note), note
    # clone A now holds clone B's experiments too, pulled from the shared remotes, metrics included
    shown = _run(["dvc", "exp", "show", "--json", "--hide-workspace"], clones["a"], env)
    assert all(name in shown for name in parts[1] if rows[name] == "ok")
    # and every experiment's MLflow run, on the shared server, is tagged with it by the collector
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_server)
    found = client.get_experiment_by_name(options.name)
    runs = client.search_runs([found.experiment_id], "tags.`seqlm.study.stamp` = 'two'", max_results=100)
    assert {r.data.tags.get("dvc.experiment") for r in runs} >= {e.name for e in planned}
