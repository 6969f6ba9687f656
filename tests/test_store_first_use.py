"""Concurrent first use of a fresh sqlite store: MLflow creates the schema and the default experiment on
its first connection, and two `seqlm train` started together on a new checkout both find it missing.

Four processes wait for a start file, then each connects and asks for the same (new) experiment. All must
succeed and agree on its id; before the first-use lock, all but one failed with "table ... already exists"
or a duplicate experiment name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

RACER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import mlflow
    from seqlm.core.paths import Paths
    from seqlm.tracking.store import connect, experiment_id, tracking_uri

    root, go = Path(sys.argv[1]), Path(sys.argv[2])
    paths = Paths(root)
    (root / f"ready.{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.005)
    client = connect(tracking_uri(paths))
    print("experiment", experiment_id(client, "race", paths))
    """
)


@pytest.mark.slow
def test_processes_racing_on_a_fresh_sqlite_store_all_get_the_same_experiment(tmp_path):
    go = tmp_path / "go"
    env = os.environ | {"SEQLM_ROOT": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(4)
    ]
    deadline = time.time() + 300
    while len(list(tmp_path.glob("ready.*"))) < len(racers) and time.time() < deadline:
        assert all(p.poll() is None for p in racers), [p.communicate() for p in racers]
        time.sleep(0.05)
    go.touch()  # every racer has imported mlflow: they meet the fresh store together
    outputs = [p.communicate(timeout=300) for p in racers]

    for proc, (out, err) in zip(racers, outputs):
        assert proc.returncode == 0, err[:3000]
    ids = {
        line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("experiment")
    }
    assert len(ids) == 1 and (tmp_path / "mlflow.db").is_file()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = [e.name for e in client.search_experiments()]
    assert sorted(names) == ["Default", "race"]


@pytest.mark.slow
def test_an_experiment_created_by_a_racer_between_look_and_create_is_reused(tmp_path):
    """The window the lock does not cover: another process creates the experiment after we found none."""
    from seqlm.core.paths import Paths
    from seqlm.tracking.store import connect, experiment_id

    client = connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    racer_id = client.create_experiment("race")

    class LooksTooEarly:
        """The real client, except that its first look predates the racer's create."""

        def __init__(self, real):
            self.real, self.looks = real, 0

        def get_experiment_by_name(self, name):
            self.looks += 1
            return None if self.looks == 1 else self.real.get_experiment_by_name(name)

        def __getattr__(self, attr):
            return getattr(self.real, attr)

    assert experiment_id(LooksTooEarly(client), "race", Paths(tmp_path)) == racer_id
