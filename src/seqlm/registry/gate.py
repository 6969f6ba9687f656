"""The champion gate: who serves as ``champion``, moved only by a better score or by hand.

The gate selects on the VALID split; test numbers are tagged and shown for reporting only, so a
champion's test score is not biased by having been chosen on it (docs/architecture.md, decision 8).
Scores compare on one scale only when they were measured on the same raw text under the same protocol.
Bits per byte do not depend on the tokenizer, so the key is the sha256 of data/raw/valid.txt (from the
download manifest) plus the evaluation protocol (batch size, window, carried state: cutting the text
into other streams changes the number a little). A champion scored on other text is first re-scored on
the current valid split with its own tokenizer (``rescoring``); the result is kept as a tag on its
version so the next registration on the same text does not pay for it again.

Every move of ``champion`` is recorded as an append-only event on the version it promotes, written
before the alias moves (``history``), plus tags on the version (when, how, why, previous champion).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.registry import history, rescoring

CHAMPION, CHALLENGER = "champion", "challenger"
SELECTED_ON = "valid"  # the split the gate compares; test is reported, never chosen on
MAX_REDECISIONS = 5  # champion moved under us this often in a row: give up and say so

# version tags written by the register stage (register.evaluation_tags) and read back here
PROTOCOL = "seqlm.eval_protocol"
BITS_PER_BYTE = "seqlm.test_bits_per_byte"  # an evaluated version has this one (promote checks it)


def tag_names(split: str) -> tuple[str, str, str]:
    """(bits per byte, word perplexity, raw text sha256) tag names of a split's score on a version."""
    return f"seqlm.{split}_bits_per_byte", f"seqlm.{split}_word_perplexity", f"seqlm.{split}_sha256"


@dataclass(frozen=True)
class Score:
    bits_per_byte: float
    word_perplexity: float | None
    text_sha256: str  # sha256 of the raw split it was measured on (data/raw/<split>.txt)
    protocol: dict
    version: int | None = None
    scored: str = "evaluate"  # evaluate (the evaluate stage) | tag (the version's tags) | rescored
    split: str = SELECTED_ON

    def comparable(self, other: "Score") -> bool:
        same = (self.split, self.text_sha256, self.protocol)
        return same == (other.split, other.text_sha256, other.protocol)

    def record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    action: str  # promoted | kept | registered_only
    reason: str
    champion: Score | None  # what the challenger was compared with (valid)


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


def tagged_score(mv, split: str = SELECTED_ON) -> Score | None:
    """A split's score the register stage tagged on a version; None for a version without one."""
    tags = mv.tags
    bits, word_tag, sha = tag_names(split)
    if bits not in tags:
        return None
    word = tags.get(word_tag)
    return Score(
        bits_per_byte=float(tags[bits]),
        word_perplexity=float(word) if word not in (None, "", "None") else None,
        text_sha256=tags.get(sha, ""),
        protocol=json.loads(tags.get(PROTOCOL, "{}")),
        version=int(mv.version),
        scored="tag",
        split=split,
    )


def champion_history(client, name: str) -> list[dict]:
    """The moves of champion that happened, oldest first (``history.events``)."""
    return history.events(client, name, aliases(client, name).get(CHAMPION))


# ------------------------------------------------------------------------------------------ scoring


def _rescore_tag(score: Score) -> str:
    p = score.protocol
    return f"seqlm.rescore.{score.split}.{score.text_sha256[:16]}.b{p.get('batch_size')}.t{p.get('bptt')}"


def champion_score(client, name: str, mv, challenger: Score, paths: Paths) -> Score:
    """The champion's score on the challenger's text, split and protocol, re-scoring it if need be."""
    tagged = tagged_score(mv, challenger.split)
    if tagged is None and tagged_score(mv, "test") is None:
        raise SeqlmError(
            f"{name} version {mv.version} is champion but has no {BITS_PER_BYTE} tag, so nothing can be "
            f"compared with it; `seqlm promote` an evaluated version"
        )
    if tagged is not None and tagged.comparable(challenger):
        return tagged
    key = _rescore_tag(challenger)
    if key in mv.tags:
        saved = Score(**json.loads(mv.tags[key]))
        if saved.comparable(challenger):
            return saved
    where = paths.raw_split(challenger.split).relative_to(paths.root)
    print(
        f"register: champion version {mv.version} was scored on other {challenger.split} data or protocol; "
        f"re-scoring it on {where}"
    )
    metrics = rescoring.rescore(name, int(mv.version), challenger.protocol, paths, challenger.split)
    score = Score(
        metrics["bits_per_byte"],
        metrics["word_perplexity"],
        challenger.text_sha256,
        challenger.protocol,
        int(mv.version),
        "rescored",
        challenger.split,
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
            f"no champion yet: version {version} "
            f"({challenger.bits_per_byte:.4f} {challenger.split} bits/byte) becomes champion",
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
            f"challenger {new:.4f} {best.split} bits/byte beats champion {old:.4f} "
            f"(version {best.version}) by "
            f"{_percent(gain)}, at least the {_percent(min_improvement)} needed; "
            f"version {version} becomes champion",
            best,
        )
    return Decision(
        "kept",
        f"challenger {new:.4f} {best.split} bits/byte does not beat champion {old:.4f} "
        f"(version {best.version}) by "
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


def set_champion(client, name: str, version: int, by: str, reason: str, previous: int | None) -> None:
    """Point ``champion`` at ``version`` (``previous`` is the champion read just now), recording the move
    as an event first: a process killed at any point leaves alias and history agreeing."""
    history.heal(client, name, previous)
    key, event = history.new_event(version, by, reason, previous)
    history.write(client, name, key, event)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    event = history.mark_done(client, name, key, event)
    tags = {
        "seqlm.champion_since": event["done_at"],
        "seqlm.champion_by": by,  # gate | manual | rollback
        "seqlm.champion_reason": event["reason"],
        "seqlm.previous_champion": "" if previous is None else str(previous),
    }
    for tag, value in tags.items():
        client.set_model_version_tag(name, str(version), tag, value)


def promote(client, name: str, version: int, reason: str) -> int | None:
    """Make an evaluated ``version`` champion by hand; returns the previous champion."""
    mv = get_version(client, name, version)
    if tagged_score(mv, "test") is None:
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
    past = history.stack(client, name, current)
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
    set_champion(client, name, target, by="rollback", reason=reason, previous=current)
    return current, target


def get_version(client, name: str, version: int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise SeqlmError(f"{name} has no version {version}; `seqlm models` lists them") from None
        raise
