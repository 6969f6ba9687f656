"""The champion history: append-only promotion events, each a tag on the version it promotes.

Every move of ``champion`` first writes an event tag ``seqlm.champion_event.<ns>.<nonce>`` (by, reason,
previous champion, ``done_at`` empty) on the version it promotes, then moves the alias, then writes the
same tag again with ``done_at`` set. Nothing is ever rewritten by another move: two racing moves write
two keys, and a rollback is one more event (docs/architecture.md, decision 8). A process killed before
the alias moved leaves a pending event that the history skips; one killed after the move but before
``done_at`` leaves the newest event pending with the alias on its version, which counts as done (and is
marked so by the next move).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time

EVENT_PREFIX = "seqlm.champion_event."
LEGACY_HISTORY_TAG = "seqlm.champion_history"  # the JSON list kept before events; seeds rollback only


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def new_event(version: int, by: str, reason: str, previous: int | None) -> tuple[str, dict]:
    """(tag key, event) for a move of champion to ``version``; keys sort by when they were written."""
    key = f"{EVENT_PREFIX}{time.time_ns():020d}.{secrets.token_hex(4)}"
    event = {
        "version": version,
        "by": by,  # gate | manual | rollback
        "reason": (reason or "(none given)")[:1000],
        "previous": previous,
        "recorded_at": _now(),
        "done_at": "",
    }
    return key, event


def write(client, name: str, key: str, event: dict) -> None:
    client.set_model_version_tag(name, str(event["version"]), key, json.dumps(event, sort_keys=True))


def mark_done(client, name: str, key: str, event: dict) -> dict:
    done = event | {"done_at": _now()}
    write(client, name, key, done)
    return done


def _all_events(client, name: str) -> list[tuple[str, dict]]:
    found = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        for key, value in mv.tags.items():
            if key.startswith(EVENT_PREFIX):
                found.append((key, json.loads(value)))
    return sorted(found, key=lambda item: item[0])


def events(client, name: str, champion: int | None) -> list[dict]:
    """The moves of champion that happened, in the order the alias moved; ``champion`` is the alias now.

    Done events are ordered by ``done_at`` (the alias had moved by then); the newest event, still pending
    with the alias on its version, was killed after its move and counts as the last one. Two racing
    moves may mark themselves done in the other order than their aliases moved: the alias decides which
    was last.
    """
    found = _all_events(client, name)
    done = sorted((e for _, e in found if e["done_at"]), key=lambda e: e["done_at"])
    if found and not found[-1][1]["done_at"] and found[-1][1]["version"] == champion:
        done.append(found[-1][1])
    last = max((i for i, e in enumerate(done) if e["version"] == champion), default=None)
    if last is not None and done[-1]["version"] != champion:
        done.append(done.pop(last))
    return done


def heal(client, name: str, champion: int | None) -> None:
    """Mark the newest event done when its alias move happened but its process died before saying so."""
    found = _all_events(client, name)
    if found and not found[-1][1]["done_at"] and found[-1][1]["version"] == champion:
        mark_done(client, name, *found[-1])


def stack(client, name: str, champion: int | None) -> list[int]:
    """The champions that rollback walks back through, the current one last: promotions push, rollbacks
    pop (a champion set outside seqlm is kept reachable as the ``previous`` of the next move)."""
    legacy = client.get_registered_model(name).tags.get(LEGACY_HISTORY_TAG)
    past: list[int] = json.loads(legacy) if legacy else []
    for event in events(client, name, champion):
        if event["by"] == "rollback":
            while past and past[-1] != event["version"]:
                past.pop()
            if past:
                continue
        elif event["previous"] is not None and (not past or past[-1] != event["previous"]):
            past.append(event["previous"])
        past.append(event["version"])
    return past
