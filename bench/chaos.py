"""Chaos: does the pipeline survive `kill -9` at any moment of any stage and end where an unbroken run ends?

    python bench/chaos.py [--kills 20] [--seed 0] [--workdir DIR] [--keep] [--stages train,register]

On a scratch copy of the project (tracked and untracked-not-ignored files, `git init`-ed there, a small,
deterministic budget written to its params.yaml) it runs one uninterrupted `dvc repro` as the reference
and times each stage from DVC's "Running stage" lines. Then, for each kill round i, it runs
`dvc repro --force` in its own process group, waits until stage ``stages[i % len(stages)]`` starts,
sleeps a seeded random fraction of that stage's reference duration and SIGKILLs the whole group; a round
whose pipeline ended before the kill is retried with a shorter delay. A plain `dvc repro` follows, and the
round "survived" when it completes (rc 0). After every round reports/eval/metrics.json must equal the
reference's to 6 significant digits (timing fields ignored, see IGNORED); at the end the scratch project
must hold no leftover temporary files or folders, and the registry exactly one version per pipeline that
trained a model (a killed-and-resumed training is one pipeline), each from a distinct run.

Last line: `kills=N survived=N metrics_equal=true orphans=0 registry_versions_ok=true`; the exit status is
non-zero unless every field is all-good. `--kills 20`: about 24 minutes on 2 shared CPU cores.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ("download", "tokenize", "train", "evaluate", "register")
RUNNING = re.compile(r"Running stage '([\w-]+)'")

# The small budget: deterministic (no wall-clock budget, fixed precision and device), about a minute in all.
SMALL = {
    "data": {"split": [0.98, 0.01, 0.01]},  # ~40 kB valid and test texts: evaluation in seconds
    "tokenizer": {"vocab_size": 500, "input_sentence_size": 20000},
    "model": {"embedding_size": 64, "hidden_size": 64},
    "train": {
        "batch_size": 16,
        "bptt": 32,
        "warmup_steps": 20,
        "max_steps": 400,  # ~10 s of fitting after ~15 s of start-up: kills in train land in fit too
        "max_minutes": 0,
        "val_every_steps": 100,
        "early_stopping_patience": 0,
        "checkpoint_every_minutes": 0.02,  # every 1.2 s: a kill in fit resumes from a periodic checkpoint
        "precision": "32-true",  # auto measures a choice on CPU, which may differ between runs
        "accelerator": "cpu",
        "devices": 1,
    },
    "evaluate": {
        "batch_size": 8,
        "bptt": 64,
        "context_resets": [16],
        "gradient_flow_steps": 16,
        "sample_tokens": 10,
    },
}
# Fields of reports/eval/metrics.json that measure the machine, not the model: wall-clock seconds and rates.
IGNORED = re.compile(r"per_s|seconds|wall|time")


# ------------------------------------------------------------------------------------------ scratch


def make_scratch(workdir: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, workdir / rel)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=chaos", "-c", "user.email=chaos@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    subprocess.run(["git", "add", "-A"], cwd=workdir, check=True)
    subprocess.run(git + ["commit", "-qm", "chaos scratch"], cwd=workdir, check=True)


def stage_env(workdir: Path) -> dict:
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(workdir / "src"),
        "PYTHONUNBUFFERED": "1",  # DVC's "Running stage" lines arrive when they are printed
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_DATASETS_OFFLINE": "1",
        # one intra-op thread: OpenMP threads spin-wait for each other, and the 2 cores are shared
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SEQLM_ROOT", None)
    return env


def check_import(workdir: Path, env: dict) -> None:
    """The venv's editable install points at another checkout; the stages must import the scratch's."""
    out = subprocess.run(
        [sys.executable, "-c", "import seqlm; print(seqlm.__file__)"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to((workdir / "src").resolve()):
        sys.exit(f"chaos: import seqlm resolves to {out}, not the scratch copy's src")


# ------------------------------------------------------------------------------------------ runs


class Repro:
    """`dvc repro` in its own process group; stdout lines timestamped as they arrive."""

    def __init__(self, workdir: Path, env: dict, force: bool, log):
        cmd = [str(BIN / "dvc"), "repro"] + (["--force"] if force else [])
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.started: dict[str, float] = {}
        self.current: str | None = None
        self.cond = threading.Condition()
        self.log = log
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            t = time.monotonic() - self.t0
            self.log.write(f"{t:8.2f} {line}")
            with self.cond:
                self.lines.append((t, line))
                if m := RUNNING.search(line):
                    self.current = m.group(1)
                    self.started[m.group(1)] = t
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_stage(self, stage: str) -> bool:
        with self.cond:
            while stage not in self.started and self.proc.poll() is None:
                self.cond.wait(0.05)
            return stage in self.started

    def kill(self) -> str | None:
        """SIGKILL the group if still running; the stage it landed in, or None when it had finished."""
        with self.cond:
            if self.proc.poll() is not None:
                return None
            landed = self.current
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.finish()
        return landed

    def finish(self) -> int:
        rc = self.proc.wait()
        self.reader.join()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything the stage left running
        except ProcessLookupError:
            pass
        return rc

    def output(self) -> str:
        return "".join(line for _, line in self.lines)


def windows(repro: Repro, end: float) -> dict[str, float]:
    """Each stage's duration: from its "Running stage" line to the next one (or the end of the run)."""
    order = sorted(repro.started.items(), key=lambda kv: kv[1])
    bounds = [t for _, t in order[1:]] + [end]
    return {stage: bound - t for (stage, t), bound in zip(order, bounds)}


# ------------------------------------------------------------------------------------------ checks


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from flat(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], obj


def metric_diffs(ref: dict, got: dict) -> list[str]:
    """Fields that differ at 6 significant digits (or in kind), timing fields left out."""
    a, b = dict(flat(ref)), dict(flat(got))
    diffs = []
    for key in sorted(a.keys() | b.keys()):
        if IGNORED.search(key):
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, float) and isinstance(y, float) and not (math.isfinite(x) or math.isfinite(y)):
            same = repr(x) == repr(y)
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            same = f"{x:.6g}" == f"{y:.6g}"
        else:
            same = x == y
        if not same:
            diffs.append(f"{key}: {x!r} != {y!r}")
    return diffs


def ignored_fields(metrics: dict) -> list[str]:
    return sorted(k for k, _ in flat(metrics) if IGNORED.search(k))


def orphans(workdir: Path) -> list[str]:
    """Temporary files and folders a killed write left behind, outside .git, .dvc/cache and .venv."""
    found = []
    for dirpath, dirnames, filenames in os.walk(workdir):
        rel = Path(dirpath).relative_to(workdir)
        if rel.parts[:1] in ((".git",), (".venv",)) or rel.parts[:2] == (".dvc", "cache"):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            temp_dir = name.startswith("tmp") and rel.parts[:1] in (("data",), ("models",), ("reports",))
            if name.endswith((".tmp", ".old")) or (temp_dir and name in dirnames):
                found.append(str(rel / name))
    return sorted(found)


def registry(workdir: Path, model_name: str, trained: int) -> tuple[bool, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{model_name}'")
    run_ids = [mv.tags.get("seqlm.run_id") for mv in versions]
    latest = max(versions, key=lambda mv: int(mv.version), default=None)
    run_json = workdir / "models" / "run.json"
    current = json.loads(run_json.read_text())["run_id"] if run_json.is_file() else None
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'") if experiments else []
    ok = (
        len(versions) == trained
        and None not in run_ids
        and len(set(run_ids)) == len(run_ids)
        and latest is not None
        and latest.tags.get("seqlm.run_id") == current
    )
    text = (
        f"registry: {len(versions)} versions of {model_name} for {trained} pipelines that trained, "
        f"{len(set(run_ids))} distinct seqlm.run_id tags, latest from run {latest and latest.run_id} "
        f"(models/run.json: {current}); MLflow runs left RUNNING: {len(running)}"
        + "".join(f"\n  RUNNING {r.info.run_id} {r.data.tags.get('seqlm.stage', '')}" for r in running)
    )
    return ok, text


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="scratch project (default: a fresh temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset to kill in")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}; the pipeline's are {', '.join(STAGES)}")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=False)
        workdir = args.workdir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="seqlm-chaos-"))
    rng = random.Random(args.seed)
    t_all = time.monotonic()
    try:
        ok = run(workdir, stages, args.kills, rng)
    finally:
        if args.keep:
            print(f"chaos: scratch project kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"chaos: {time.monotonic() - t_all:.0f} s in all", file=sys.stderr)
    sys.exit(0 if ok else 1)


def run(workdir: Path, stages: list[str], kills: int, rng: random.Random) -> bool:
    make_scratch(workdir)
    env = stage_env(workdir)
    check_import(workdir, env)
    log = open(workdir.parent / f"{workdir.name}.log", "a", buffering=1)
    print(f"chaos: scratch {workdir}, log {log.name}")
    metrics_file = workdir / "reports" / "eval" / "metrics.json"
    model_name = yaml.safe_load((workdir / "params.yaml").read_text())["registry"]["model_name"]

    log.write("=== reference: dvc repro\n")
    ref = Repro(workdir, env, force=False, log=log)
    rc = ref.finish()
    end = time.monotonic() - ref.t0
    if rc != 0:
        sys.exit(f"chaos: the reference `dvc repro` failed (rc {rc}):\n{ref.output()[-4000:]}")
    durations = windows(ref, end)
    reference = json.loads(metrics_file.read_text())
    print(
        f"reference: {end:.1f} s; "
        + ", ".join(f"{s} {d:.1f} s" for s, d in durations.items())
        + f"; ignored timing fields: {', '.join(ignored_fields(reference)) or 'none'}"
    )
    trained = 1

    survived = 0
    metrics_equal = True
    landed_in: dict[str, int] = {}
    resumes = 0
    seen: set[str] = set()  # leftovers present after some round, cleared or not by a later one
    done = 0  # kills that landed, each followed by a rerun
    for i in range(kills):
        stage = stages[i % len(stages)]
        fraction = rng.random()
        t_round = time.monotonic()
        while True:
            delay = fraction * durations[stage]
            log.write(f"=== round {i}: dvc repro --force, kill {delay:.2f} s into {stage}\n")
            killed = Repro(workdir, env, force=True, log=log)
            landed = None
            if killed.wait_stage(stage):
                time.sleep(delay)
                landed = killed.kill()
            rc = killed.finish()
            ran_train = "train" in killed.started
            if landed is not None or rc != 0:
                break
            fraction /= 2  # the pipeline ended before the kill: a completed pipeline, try again sooner
            trained += ran_train
            print(f"round {i}: {stage} ended before the kill at {delay:.2f} s; retrying sooner")
        if landed is None:
            print(f"round {i}: `dvc repro --force` failed on its own (rc {rc}) before the kill; stopping")
            print("  " + killed.output()[-3000:].replace("\n", "\n  "))
            break
        done += 1
        landed_in[landed] = landed_in.get(landed, 0) + 1
        log.write(f"=== round {i}: dvc repro\n")
        rerun = Repro(workdir, env, force=False, log=log)
        rc = rerun.finish()
        survived += rc == 0
        trained += ran_train or "train" in rerun.started
        diffs = metric_diffs(reference, json.loads(metrics_file.read_text())) if rc == 0 else ["(no rerun)"]
        metrics_equal &= not diffs
        resumed = "train: resuming from" in rerun.output()
        resumes += resumed
        left = orphans(workdir)
        seen.update(left)
        print(
            f"round {i}: kill in {stage} after {delay:.2f} s (landed in {landed}); rerun rc {rc} "
            f"({'ran ' + ','.join(rerun.started) if rerun.started else 'nothing to run'}); "
            f"{'resumed training; ' if resumed else ''}metrics {'equal' if not diffs else 'DIFFER'}; "
            f"{len(left)} orphans; "
            f"{time.monotonic() - t_round:.0f} s",
            flush=True,
        )
        for d in diffs[:10]:
            print(f"  {d}")
        for o in left:
            print(f"  orphan (so far): {o}")
        if rc != 0:
            print("  " + rerun.output()[-3000:].replace("\n", "\n  "))
            print(f"round {i}: stopping: the project no longer reproduces; later rounds would repeat this")
            break

    left = orphans(workdir)
    for o in left:
        print(f"orphan: {o}")
    versions_ok, text = registry(workdir, model_name, trained)
    print(text)
    print(
        "kills landed per stage: "
        + ", ".join(f"{s} {n}" for s, n in landed_in.items())
        + f"; reruns that resumed training: {resumes}"
        + f"; leftovers seen after some round: {len(seen)}, still there at the end: {len(left)}"
    )
    good = done == kills and survived == kills and metrics_equal and not left and versions_ok
    print(
        f"kills={done} survived={survived} metrics_equal={str(metrics_equal).lower()} "
        f"orphans={len(left)} registry_versions_ok={str(versions_ok).lower()}"
    )
    return good


if __name__ == "__main__":
    main()
