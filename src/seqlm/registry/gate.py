"""The champion gate: who serves as ``champion``, moved only by a better score or by hand.

Scores compare on one scale only when they were measured on the same raw test text under the same
protocol (docs/architecture.md, decision 8). Bits per byte do not depend on the tokenizer, so the key
is the sha256 of data/raw/test.txt (from the download manifest) plus the evaluation protocol (batch
size, window, carried state: cutting the text into other streams changes the number a little). A
champion scored on other text is first re-scored on the current test split with its own tokenizer
(``rescoring``); the result is kept as a tag on its version so the next registration on the same text
does not pay for it again.

Every move of ``champion`` is recorded: tags on the version (when, how, why, previous champion) and
the registered model's tag ``seqlm.champion_history``, a JSON list of versions, the current one last,
which `seqlm rollback` walks back.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.registry import rescoring

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "seqlm.champion_history"
MAX_REDECISIONS = 5  # champion moved under us this often in a row: give up and say so

# version tags written by the register stage (register.evaluation_tags) and read back here
BITS_PER_BYTE = "seqlm.test_bits_per_byte"
WORD_PERPLEXITY = "seqlm.test_word_perplexity"
TEST_SHA256 = "seqlm.test_sha256"
PROTOCOL = "seqlm.eval_protocol"


@dataclass(frozen=True)
class Score:
    bits_per_byte: float
    word_perplexity: float | None
    test_sha256: str
    protocol: dict
    version: int | None = None
    scored: str = "evaluate"  # evaluate (the evaluate stage) | tag (the version's tags) | rescored

    def comparable(self, other: "Score") -> bool:
        return self.test_sha256 == other.test_sha256 and self.protocol == other.protocol

    def record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    action: str  # promoted | kept | registered_only
    reason: str
    champion: Score | None  # what the challenger was compared with


# ------------------------------------------------------------------------------------------ reading


def aliases(client, name: str) -> dict[str, int]:
    """alias -> version of the registered model; empty when the model does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: int(version) for alias, version in sorted(model.aliases.items())}


def read_champion(client, name: str):
    """The champion's ModelVersion, or None. The gate calls this again right before the alias moves."""
    version = aliases(client, name).get(CHAMPION)
    return None if version is None else client.get_model_version(name, str(version))


def tagged_score(mv) -> Score | None:
    """The score the register stage tagged on a version; None for a version without one (unevaluated)."""
    tags = mv.tags
    if BITS_PER_BYTE not in tags:
        return None
    word = tags.get(WORD_PERPLEXITY)
    return Score(
        bits_per_byte=float(tags[BITS_PER_BYTE]),
        word_perplexity=float(word) if word not in (None, "", "None") else None,
        test_sha256=tags.get(TEST_SHA256, ""),
        protocol=json.loads(tags.get(PROTOCOL, "{}")),
        version=int(mv.version),
        scored="tag",
    )


def history(client, name: str) -> list[int]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


# ------------------------------------------------------------------------------------------ scoring


def _rescore_tag(test_sha256: str, protocol: dict) -> str:
    return f"seqlm.rescore.{test_sha256[:16]}.b{protocol.get('batch_size')}.t{protocol.get('bptt')}"


def champion_score(client, name: str, mv, challenger: Score, paths: Paths) -> Score:
    """The champion's score on the challenger's test text and protocol, re-scoring it if need be."""
    tagged = tagged_score(mv)
    if tagged is None:
        raise SeqlmError(
            f"{name} version {mv.version} is champion but has no {BITS_PER_BYTE} tag, so nothing can be "
            f"compared with it; `seqlm promote` an evaluated version"
        )
    if tagged.comparable(challenger):
        return tagged
    key = _rescore_tag(challenger.test_sha256, challenger.protocol)
    if key in mv.tags:
        saved = json.loads(mv.tags[key])
        if saved["test_sha256"] == challenger.test_sha256 and saved["protocol"] == challenger.protocol:
            return Score(**saved)
    print(
        f"register: champion version {mv.version} was scored on other test data or protocol; "
        f"re-scoring it on {paths.raw_split('test').relative_to(paths.root)}"
    )
    metrics = rescoring.rescore(name, int(mv.version), challenger.protocol, paths)
    score = Score(
        metrics["bits_per_byte"],
        metrics["word_perplexity"],
        challenger.test_sha256,
        challenger.protocol,
        int(mv.version),
        "rescored",
    )
    client.set_model_version_tag(name, str(mv.version), key, json.dumps(score.record()))
    return score


# ------------------------------------------------------------------------------------------ the gate


def _percent(x: float) -> str:
    return f"{x * 100:.3g}%"


def decide(
    client, name: str, version: int, challenger: Score, champion_mv, min_improvement: float, paths: Paths
) -> Decision:
    if champion_mv is None:
        return Decision(
            "promoted",
            f"no champion yet: version {version} ({challenger.bits_per_byte:.4f} bits/byte) becomes champion",
            None,
        )
    if int(champion_mv.version) == version:
        return Decision("kept", f"version {version} is already champion", tagged_score(champion_mv))
    best = champion_score(client, name, champion_mv, challenger, paths)
    new, old = challenger.bits_per_byte, best.bits_per_byte
    gain = 1 - new / old
    if new <= old * (1 - min_improvement):
        return Decision(
            "promoted",
            f"challenger {new:.4f} bits/byte beats champion {old:.4f} (version {best.version}) by "
            f"{_percent(gain)}, at least the {_percent(min_improvement)} needed; "
            f"version {version} becomes champion",
            best,
        )
    return Decision(
        "kept",
        f"challenger {new:.4f} bits/byte does not beat champion {old:.4f} (version {best.version}) by "
        f"{_percent(min_improvement)} (gain {_percent(gain)}); champion stays version {best.version}",
        best,
    )


def gate(
    client, name: str, version: int, challenger: Score, min_improvement: float, paths: Paths
) -> Decision:
    """Decide against the champion read now; move the alias only if it is still that champion."""
    for _ in range(MAX_REDECISIONS):
        read = read_champion(client, name)
        decision = decide(client, name, version, challenger, read, min_improvement, paths)
        if decision.action != "promoted":
            return decision
        before = None if read is None else int(read.version)
        now = read_champion(client, name)  # another registration may have moved it meanwhile
        if (None if now is None else int(now.version)) == before:
            set_champion(client, name, version, by="gate", reason=decision.reason, previous=before)
            return decision
        print(
            f"register: champion moved from version {before} to {now.version} while deciding; deciding again"
        )
    raise SeqlmError(
        f"champion of {name} moved {MAX_REDECISIONS} times while register decided; run register again"
    )


# ------------------------------------------------------------------------------------------ moving it


def set_champion(
    client,
    name: str,
    version: int,
    by: str,
    reason: str,
    previous: int | None,
    new_history: list[int] | None = None,
) -> None:
    """Point ``champion`` at ``version`` and record the move on the version and in the history."""
    if new_history is None:
        new_history = history(client, name)
        if previous is not None and (not new_history or new_history[-1] != previous):
            new_history.append(previous)  # a champion set outside seqlm: keep it reachable by rollback
        new_history.append(version)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tags = {
        "seqlm.champion_since": now,
        "seqlm.champion_by": by,  # gate | manual | rollback
        "seqlm.champion_reason": reason or "(none given)",
        "seqlm.previous_champion": "" if previous is None else str(previous),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value[:5000])
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(new_history))


def promote(client, name: str, version: int, reason: str) -> int | None:
    """Make an evaluated ``version`` champion by hand; returns the previous champion."""
    mv = get_version(client, name, version)
    if tagged_score(mv) is None:
        raise SeqlmError(
            f"{name} version {version} has no test bits-per-byte tag (it was not evaluated); "
            "refusing to make it champion"
        )
    current = aliases(client, name).get(CHAMPION)
    if current == version:
        return current
    set_champion(client, name, version, by="manual", reason=reason, previous=current)
    return current


def rollback(client, name: str) -> tuple[int, int]:
    """Move ``champion`` back to the one before it; returns (from, to)."""
    current = aliases(client, name).get(CHAMPION)
    if current is None:
        raise SeqlmError(f"{name} has no champion to roll back from")
    past = history(client, name)
    while past and past[-1] == current:
        past.pop()
    if not past:
        raise SeqlmError(
            f"{name} version {current} is the first recorded champion; "
            "there is no previous champion to roll back to"
        )
    target = past[-1]
    get_version(client, name, target)
    reason = f"rollback from version {current}"
    set_champion(client, name, target, by="rollback", reason=reason, previous=current, new_history=past)
    return current, target


def get_version(client, name: str, version: int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise SeqlmError(f"{name} has no version {version}; `seqlm models` lists them") from None
        raise
