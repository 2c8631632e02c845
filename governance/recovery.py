"""Interrupted turns, found and recorded at start-up: a crash leaves no turn open for good.

A turn is *open* when the ledger holds its ``turn.received`` and none of its closing events
(``turn.released``, ``turn.failed``, ``turn.interrupted``). A process that dies mid-turn (``kill
-9``, a power cut) leaves its turns open; ``recover_interrupted`` appends one ``turn.interrupted``
event for each dead one (its last event, that event's index and age, the process that ran it)
and indexes it (a ``turns`` row with status ``interrupted``, its input images and decision
inputs), in the same transaction.

Which open turns are dead, with several replicas on one database (the rule, in this order):

1. every ``turn.received`` names the process running the turn: host name, pid and a random id
   made at process start (``ProcessInstance``);
2. a turn of this very process (same random id) is alive;
3. a turn of this host whose pid no longer runs, or whose pid is this process's own but whose
   random id belongs to no instance made in this process (the pid was reused), is dead at once;
4. any other open turn (another host, or a pid that still runs) is dead only when its last event
   is older than ``stale_after_ms``: four times the upstream timeout and at least ten minutes,
   well above the longest a live turn spends between two appends (one upstream call).

A turn closed twice is impossible: the ``turns`` row's primary key makes the second replica's
append fail (nothing written), which is then skipped.

A live process closes one of its own turns this way too (``record_interrupted``, reason
``failure_not_recorded``): a turn that failed and whose failure record could not be written,
because the blobs that record commits to could not be stored (a full disk). The interruption
cites only what the ledger already holds, so it can be written when the failure record cannot.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, text

from governance.content import IMAGE_COLUMNS, INPUT_COLUMNS, TURN_COLUMNS
from governance.ledger_vocabulary import CLOSING_EVENTS, ledger_event
from storage.ledger import Ledger, LedgerEvent, SideRows
from storage.ledger.leaf import decode_leaf

log = logging.getLogger("custody")

MIN_STALE_MS = 600_000
# Why an open turn is closed as interrupted (the event's ``reason``), in words for its row.
FAILURE_NOT_RECORDED = "failure_not_recorded"
_WHY = {
    "process_gone": "its process ended",
    "stale": "its process ended",
    FAILURE_NOT_RECORDED: "its failure record could not be stored",
}
_MADE_HERE: set[str] = set()  # instance ids made in this process: their turns are alive


@dataclass(frozen=True)
class ProcessInstance:
    """The process running turns: recorded in each ``turn.received`` for crash recovery."""

    host: str
    pid: int
    instance: str
    started_ms: int

    @classmethod
    def current(cls) -> ProcessInstance:
        """A new instance for this process (one per ``Services``; tests make several)."""
        made = cls(socket.gethostname(), os.getpid(), secrets.token_hex(8), _now_ms())
        _MADE_HERE.add(made.instance)
        return made

    def leaf_body(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "instance": self.instance,
            "started_ms": self.started_ms,
        }


def stale_after_ms(upstream_timeout_s: float) -> int:
    """How old an open turn of another process must be before it counts as dead (rule 4)."""
    return max(MIN_STALE_MS, int(upstream_timeout_s * 4000))


@dataclass(frozen=True)
class OpenTurn:
    turn_id: str
    entries: list[tuple[int, int, str, dict[str, Any]]]  # (index, time_ms, type, leaf document)

    @property
    def received(self) -> dict[str, Any]:
        return next(doc for _, _, t, doc in self.entries if t == "turn.received")


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def why_dead(turn: OpenTurn, me: ProcessInstance, now_ms: int, stale_ms: int) -> str | None:
    """``process_gone`` or ``stale`` when the open turn is dead under the rule above, else None."""
    process = turn.received.get("body", {}).get("process")
    if isinstance(process, dict):
        if process.get("instance") in _MADE_HERE:
            return None  # this process's own (a sibling instance in the same process)
        if process.get("host") == me.host:
            pid = process.get("pid")
            if isinstance(pid, int) and (pid == me.pid or not _pid_runs(pid)):
                return "process_gone"
    last_ms = turn.entries[-1][1]
    return "stale" if now_ms - last_ms > stale_ms else None


def find_open_turns(engine: Engine, turn_id: str | None = None) -> list[OpenTurn]:
    """Every turn with a ``turn.received`` and no closing event (or only ``turn_id``, if it is
    open), with its entries in order."""
    closing = ", ".join(f"'{t}'" for t in CLOSING_EVENTS)
    only = " AND r.turn_id = :only" if turn_id is not None else ""
    with engine.connect() as conn:
        ids = [
            str(r[0])
            for r in conn.execute(
                text(
                    f"SELECT r.turn_id FROM ledger_entries r WHERE r.type = 'turn.received'{only}"
                    " AND NOT EXISTS (SELECT 1 FROM ledger_entries c WHERE c.turn_id = r.turn_id"
                    f" AND c.type IN ({closing})) ORDER BY r.idx"
                ),
                {"only": turn_id} if turn_id is not None else {},
            ).all()
        ]
        turns = []
        for turn_id in ids:
            rows = conn.execute(
                text(
                    "SELECT idx, time_ms, type, leaf FROM ledger_entries WHERE turn_id = :t"
                    " ORDER BY idx"
                ),
                {"t": turn_id},
            ).all()
            entries = [(int(i), int(t), str(ty), decode_leaf(bytes(b))) for i, t, ty, b in rows]
            turns.append(OpenTurn(turn_id, entries))
    return turns


def _digests(engine: Engine, commitments: list[str]) -> dict[str, str]:
    if not commitments:
        return {}
    with engine.connect() as conn:
        query = text("SELECT commitment, digest FROM blob_commitments WHERE commitment IN :c")
        rows = conn.execute(
            query.bindparams(bindparam("c", expanding=True)), {"c": commitments}
        ).all()
    return {str(c): str(d) for c, d in rows}


def _interrupted(
    turn: OpenTurn, reason: str, me: ProcessInstance, now_ms: int, engine: Engine
) -> tuple[LedgerEvent, list[SideRows]]:
    received = turn.received
    body = received.get("body", {})
    last_idx, last_ms, last_type, _ = turn.entries[-1]
    event = ledger_event(
        "turn.interrupted",
        {
            "reason": reason,
            "last_event": last_type,
            "last_index": last_idx,
            "age_ms": max(now_ms - last_ms, 0),
            "process": body.get("process"),
            "recorded_by": me.leaf_body(),
        },
        tenant=received["tenant"],
        actor=received["actor"],
        session=received.get("session"),
        turn=turn.turn_id,
    )
    images = [i for i in body.get("images", []) if isinstance(i, dict)]
    wanted = [body.get("request"), body.get("prompt"), *(i.get("commitment") for i in images)]
    digests = _digests(engine, [c for c in wanted if isinstance(c, str)])
    first_idx, first_ms = turn.entries[0][0], turn.entries[0][1]
    requested = [d["body"] for _, _, ty, d in turn.entries if ty == "upstream.requested"]
    upstream = str(requested[0].get("upstream", "")) if requested else ""
    turn_row = (
        turn.turn_id,
        received["tenant"],
        received["actor"],
        received.get("session"),
        body.get("model", ""),
        body.get("api_version", ""),
        body.get("method", ""),
        "interrupted",
        reason,
        digests.get(body.get("prompt") or "") if body.get("prompt") else None,
        digests.get(body.get("request") or ""),
        None,
        upstream,
        None,
        None,
        None,
        None,
        f"the turn was interrupted after {last_type} (entry {last_idx}): {_WHY[reason]}",
        None,
        None,
        first_idx,
        first_ms,
        now_ms,
    )
    image_rows = [
        (
            turn.turn_id,
            "input",
            i.get("role"),
            i.get("content"),
            i.get("part"),
            i.get("mime_type"),
            digests.get(i.get("commitment") or ""),
            i.get("bytes"),
            i.get("width"),
            i.get("height"),
            None,
            None,
        )
        for i in images
        if digests.get(i.get("commitment") or "")
    ]
    inputs = [
        (turn.turn_id, doc["body"].get("stage"), doc["body"].get("input"), t)
        for _, t, ty, doc in turn.entries
        if ty == "policy.decided" and isinstance(doc["body"].get("input"), str)
    ]
    side = [SideRows("turns", TURN_COLUMNS, [turn_row])]
    if image_rows:
        side.append(SideRows("turn_images", IMAGE_COLUMNS, image_rows))
    if inputs:
        side.append(SideRows("decision_inputs", INPUT_COLUMNS, inputs))
    return event, side


def recover_interrupted(
    ledger: Ledger, engine: Engine, me: ProcessInstance, *, upstream_timeout_s: float
) -> list[str]:
    """Record every dead open turn as ``turn.interrupted``; returns their turn ids."""
    now = _now_ms()
    stale = stale_after_ms(upstream_timeout_s)
    done = []
    for turn in find_open_turns(engine):
        reason = why_dead(turn, me, now, stale)
        if reason is None:
            continue
        event, side = _interrupted(turn, reason, me, now, engine)
        try:
            ledger.append([event], side)
        except Exception as exc:  # another replica recorded it first (the turns row exists)
            log.info("turn %s was not recorded as interrupted here: %s", turn.turn_id, exc)
            continue
        done.append(turn.turn_id)
    if done:
        log.warning(
            "recorded %d interrupted turn(s) (turn.interrupted): %s",
            len(done),
            ", ".join(done[:20]) + (" ..." if len(done) > 20 else ""),
        )
    return done


def record_interrupted(
    ledger: Ledger, engine: Engine, me: ProcessInstance, turn_id: str, reason: str
) -> bool:
    """Close one open turn of this process as interrupted at once: a turn that failed and
    whose failure record could not be written (its blobs could not be stored), instead of
    leaving it open until the next start-up. The record cites only what the ledger already
    holds. False when the turn is not open, or this append fails too (start-up retries it)."""
    turns = find_open_turns(engine, turn_id)
    if not turns:
        return False
    event, side = _interrupted(turns[0], reason, me, _now_ms(), engine)
    try:
        ledger.append([event], side)
    except Exception as exc:
        log.warning("turn %s could not be recorded as interrupted now: %s", turn_id, exc)
        return False
    log.warning("turn %s recorded as interrupted (%s)", turn_id, reason)
    return True


def _now_ms() -> int:
    return int(time.time() * 1000)
