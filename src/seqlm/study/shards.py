"""The study across several machines: each runs one shard of the plan and pushes its experiments; any
machine then collects them all (docs/study-design.md, "Several machines").

Every machine computes the same partition from the same commit and options (``partition``: longest first,
each experiment to the shard with the fewest estimated minutes so far), and the shared ``--stamp`` makes the
experiment names agree. Results travel the way a team already shares them: experiments by `dvc exp push` to
the git remote (their DVC-tracked outputs, metrics included, to the default DVC remote), MLflow runs to the
one tracking server every machine names in MLFLOW_TRACKING_URI, where each shard also leaves a record
(``shard_records``).

Owns ``Shard`` and ``parse_shard``, ``partition``, the checks before a shard starts (``preflight``,
``check_committed``) and the `dvc exp push` / `pull` commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from seqlm.core.errors import SeqlmError
from seqlm.core.git import git
from seqlm.core.paths import Paths
from seqlm.study import budget
from seqlm.study.plan import Experiment
from seqlm.study.queue import run_dvc

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
    return budget.training_minutes(e) + budget.overhead_minutes(e)


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
