"""Synthetic recorded turns, bulk-inserted straight into a migrated database (bench and tests).

For measuring and EXPLAINing the compliance queries at scale without running 10⁶ real turns:
``turns`` rows with realistic spreads (tenants, 50 actors and 5,000 sessions per tenant, two
models, one turn in ten denied), one ``ledger_entries`` row per turn and one ``turn_labels``
row (``campaign=c-0`` … ``c-19``; every 50th turn also ``@version=final``). The leaves are
well-formed version-1 leaves but the tree (``ledger_hashes``, ``ledger_head``) is not built: the
database is for queries only, never for ``custody ledger verify``. Rows go in by multi-row
INSERTs in batches of 10,000 (one transaction each) on SQLite, ``COPY`` on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Engine, insert

from storage.schema.ledger import LEDGER_ENTRIES
from storage.schema.reviews import ReviewDecision, ReviewTask
from storage.schema.turns import TURN_LABELS, TURNS

BATCH = 10_000
BASE_MS = 1_780_000_000_000  # 2026-05
MODELS = ("gemini-2.5-flash-image", "gemini-3-pro-image-preview")
EVENT_TYPES = ("turn.received", "policy.decided", "turn.released")
CAMPAIGNS = 20


def _labels(i: int, tenants: int) -> list[dict[str, Any]]:
    n, turn = i // tenants, {"turn_id": f"{i:032x}", "tenant": f"t{i % tenants}"}
    created = BASE_MS + i * 10
    rows = [{**turn, "name": "campaign", "value": f"c-{n % CAMPAIGNS}", "created_ms": created}]
    if n % 50 == 0:
        rows.append({**turn, "name": "@version", "value": "final", "created_ms": created})
    return rows


def _turn(i: int, tenants: int) -> tuple[dict[str, Any], dict[str, Any]]:
    tenant = f"t{i % tenants}"
    n = i // tenants
    denied = i % 10 == 7
    turn_id = f"{i:032x}"
    created = BASE_MS + i * 10
    actor = f"actor-{n % 50}@{tenant}"
    session = f"s-{n % 5000}"
    row = {
        "turn_id": turn_id,
        "tenant": tenant,
        "actor": actor,
        "session_id": session,
        "model": MODELS[(i // 3) % 2],
        "api_version": "v1beta",
        "method": "generateContent",
        "status": "failed" if denied else "released",
        "outcome": "POLICY_DENIED" if denied else "ok",
        "prompt_sha256": None,
        "request_sha256": hashlib.sha256(turn_id.encode()).hexdigest(),
        "response_sha256": None,
        "upstream": "bench",
        "upstream_status": None if denied else 200,
        "model_version": None,
        "finish_reason": None if denied else "STOP",
        "block_reason": None,
        "error": None,
        "usage_json": None if denied else '{"promptTokenCount":12,"candidatesTokenCount":1290}',
        "timings_json": json.dumps(
            {"upstream_ms": 0 if denied else 900 + i % 300, "total_ms": 950}
        ),
        "first_entry_index": i,
        "created_ms": created,
        "finished_ms": created + 950,
    }
    kind = EVENT_TYPES[i % 3]
    leaf = json.dumps(
        {"v": 1, "origin": "bench", "type": kind, "tenant": tenant, "actor": actor,
         "session": session, "turn": turn_id, "time_ms": created, "body": {}},
        sort_keys=True, separators=(",", ":"),
    ).encode()  # fmt: skip
    entry = {
        "idx": i,
        "time_ms": created,
        "type": kind,
        "tenant": tenant,
        "turn_id": turn_id,
        "leaf": leaf,
        "leaf_hash": hashlib.sha256(b"\x00" + leaf).digest(),
    }
    return row, entry


def synthesise_turns(engine: Engine, *, turns: int, tenants: int = 4, start: int = 0) -> None:
    """Insert turns ``start .. start+turns-1`` (and their ledger rows) into ``engine``'s DB."""
    if engine.dialect.name == "postgresql":
        _copy_turns(engine, turns=turns, tenants=tenants, start=start)
        return
    for first in range(start, start + turns, BATCH):
        pairs = [_turn(i, tenants) for i in range(first, min(first + BATCH, start + turns))]
        with engine.begin() as conn:
            conn.execute(insert(TURNS), [p[0] for p in pairs])
            conn.execute(insert(LEDGER_ENTRIES), [p[1] for p in pairs])
            labels = [lab for i in range(first, first + len(pairs)) for lab in _labels(i, tenants)]
            conn.execute(insert(TURN_LABELS), labels)


REVIEW_TASKS = ReviewTask.__table__  # type: ignore[attr-defined]
REVIEW_DECISIONS = ReviewDecision.__table__  # type: ignore[attr-defined]
TASK_STATUSES = ("approved", "rejected", "expired", "changes_requested", "open")
HELD_EVERY = 20  # one turn in 20 (i % 20 == 3) is held for review


def _review(i: int, tenants: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    created = BASE_MS + i * 10 + 5
    status = TASK_STATUSES[(i // HELD_EVERY) % len(TASK_STATUSES)]
    closed = status != "open"
    task = {
        "task_id": f"task{i:028x}", "tenant": f"t{i % tenants}", "turn_id": f"{i:032x}",
        "session": None, "stage": ("request", "response")[i % 2], "requester": "bench",
        "requester_key": None, "reviewer_group": "brand", "approvals_required": 1,
        "deadline_s": 3600, "deadline_ms": created + 3_600_000, "on_deadline": "reject",
        "escalate_to": None, "reviewer_identity": "named", "round": 1, "status": status,
        "claimed_by": None, "claimed_until_ms": None, "request_hash": "0" * 64, "shown": "{}",
        "shown_digest": "0" * 64, "reasons": "[]", "created_ms": created,
        "decided_ms": created + (i * 7919) % 900_000 if closed else None, "reason": None,
        "outcome_index": None,
    }  # fmt: skip
    if not closed or status == "expired":
        return task, None
    decision = {
        "decision_id": f"dec{i:029x}", "task_id": task["task_id"],
        "reviewer": f"reviewer-{i % 7}", "reviewer_key": None, "reviewer_group": "brand",
        "round": 1, "decision": {"approved": "approve", "rejected": "reject"}.get(status, status),
        "comment": "", "shown_digest": "0" * 64, "credit": "", "ledger_index": None,
        "time_ms": created + (i * 104_729) % 30_000,
    }  # fmt: skip
    return task, decision


def synthesise_reviews(engine: Engine, *, turns: int, tenants: int = 4, start: int = 0) -> None:
    """Review tasks (and a decision for each decided one) for every ``HELD_EVERY``-th turn of
    ``start .. start+turns-1``: statuses cycling through ``TASK_STATUSES``."""
    held = [i for i in range(start, start + turns) if i % HELD_EVERY == 3]
    for first in range(0, len(held), BATCH):
        pairs = [_review(i, tenants) for i in held[first : first + BATCH]]
        with engine.begin() as conn:
            conn.execute(insert(REVIEW_TASKS), [p[0] for p in pairs])
            decided = [p[1] for p in pairs if p[1] is not None]
            if decided:
                conn.execute(insert(REVIEW_DECISIONS), decided)


def _copy_turns(engine: Engine, *, turns: int, tenants: int, start: int) -> None:
    """PostgreSQL: the same rows through ``COPY`` (psycopg), ten times faster than INSERTs."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        first_row, first_entry = _turn(start, tenants)
        turn_cols, entry_cols = list(first_row), list(first_entry)
        with cur.copy(f"COPY turns ({', '.join(turn_cols)}) FROM STDIN") as copy:
            for i in range(start, start + turns):
                row, _ = _turn(i, tenants)
                copy.write_row([row[c] for c in turn_cols])
        with cur.copy(f"COPY ledger_entries ({', '.join(entry_cols)}) FROM STDIN") as copy:
            for i in range(start, start + turns):
                _, entry = _turn(i, tenants)
                copy.write_row([entry[c] for c in entry_cols])
        label_cols = list(_labels(start, tenants)[0])
        with cur.copy(f"COPY turn_labels ({', '.join(label_cols)}) FROM STDIN") as copy:
            for i in range(start, start + turns):
                for lab in _labels(i, tenants):
                    copy.write_row([lab[c] for c in label_cols])
        raw.commit()
    finally:
        raw.close()
