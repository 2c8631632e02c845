"""Compliance queries over the recorded turns and ledger events: filtered, sorted, paged, provable.

Turns are read from the turn index (``turns``, written in the same transaction as each turn's
closing ledger event), events from ``ledger_entries`` itself; every row carries the ledger
indexes it stands on, so an auditor can ask for each one's inclusion proof
(``GET /api/v1/query/turns/{id}/proof``). Nothing here writes: the one query that reads private
content, prompt search, is recorded by its caller (``governance.compliance.prompt_search``).

Paging is keyset, newest first: a turn page continues below ``(created_ms, turn_id)`` of its last
row, an event page below its last ledger index. Rows appended after a page was read sort above
it, so a cursor never repeats or skips a row that existed when it was issued. A cursor is opaque
(base64url of JSON) and bound to its filters: used with other filters it is refused (400), not
silently reinterpreted. Every turn filter is served by one ``0010_query_indexes`` index that ends
in the paging key; the ``label`` filter by ``turn_labels``' ``ix_turn_labels_q`` (``0014``), which
ends in the same key, so a label's page is read from that index and each row joined to its turn.
An event ``stage`` is a set of event types (``EVENT_STAGES``): each type pages from
``ix_ledger_entries_q_type`` on its own and the pages are merged, as ``policy=deny`` does.

Tenant walls are the caller's ``tenant`` argument: the routes pass the caller's own tenant (an
operator may name any, or none for every tenant, which no index serves).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sqlalchemy import Engine, Select, String, exists, literal, or_, select, tuple_, union_all

from governance.ledger_vocabulary import EVENT_STAGES
from storage.ledger.leaf import decode_leaf
from storage.schema.ledger import LEDGER_ENTRIES
from storage.schema.reviews import ReviewDecision, ReviewTask
from storage.schema.sessions import EDIT_SESSIONS
from storage.schema.turns import TURN_IMAGES, TURN_LABELS, TURNS, VERSION_LABEL

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
# Policy outcomes of a turn as the query names them, from what the turn index records.
POLICY_OUTCOMES = ("allow", "deny", "review")
DENY_REASONS = ("POLICY_DENIED", "RATE_LIMITED")
STAGES = ("request", "response")
_LABEL_NAME = re.compile(r"^(@version|[a-z0-9_.-]{1,64})$")

REVIEW_TASKS = ReviewTask.__table__  # type: ignore[attr-defined]
REVIEW_DECISIONS = ReviewDecision.__table__  # type: ignore[attr-defined]


class QueryError(ValueError):
    """A query that cannot be answered as asked: the message says what to change."""


@dataclass(frozen=True)
class TurnFilter:
    """Which turns: every field that is not None must match (``tenant`` None: every tenant)."""

    tenant: str | None
    actor: str | None = None
    session: str | None = None  # Custody's session id, or the x-custody-session value sent
    model: str | None = None
    status: str | None = None  # released | failed | interrupted
    outcome: str | None = None  # the turn index's outcome (safety outcome or failure reason)
    policy: str | None = None  # allow | deny | review
    reviewer: str | None = None  # turns this reviewer decided
    stage: str | None = None  # turns held for review at this stage
    label: str | None = None  # "name=value": an x-custody-labels pair, or "@version=text"
    since_ms: int | None = None  # created at or after
    until_ms: int | None = None  # created before

    def __post_init__(self) -> None:
        if self.label is not None:
            label_pair(self.label)
        if self.policy is not None and self.policy not in POLICY_OUTCOMES:
            raise QueryError(
                f"policy must be one of {', '.join(POLICY_OUTCOMES)}; got {self.policy!r}"
            )
        if self.stage is not None and self.stage not in STAGES:
            raise QueryError(f"stage must be one of {', '.join(STAGES)}; got {self.stage!r}")
        _check_range(self.since_ms, self.until_ms)

    def used(self) -> dict[str, Any]:
        """The filters set, by name (what a recorded search says it searched)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class EventFilter:
    """Which ledger events. ``actor``, ``session`` and ``reviewer`` select the events of the
    turns that actor sent, that session holds, that reviewer decided (the ledger's own columns
    are tenant, type, turn and time; who acted on a turn is in its index)."""

    tenant: str | None
    type: str | None = None
    turn: str | None = None
    actor: str | None = None
    session: str | None = None
    model: str | None = None
    reviewer: str | None = None
    label: str | None = None  # the events of the turns with this label (as ``TurnFilter``'s)
    stage: str | None = None  # one of ``EVENT_STAGES``: the events of that stage of a turn
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.label is not None:
            label_pair(self.label)
        if self.stage is not None and self.stage not in EVENT_STAGES:
            raise QueryError(
                f"stage must be one of {', '.join(EVENT_STAGES)} for events; got {self.stage!r}"
            )
        if self.stage is not None and self.type not in (None, *EVENT_STAGES[self.stage]):
            raise QueryError(
                f"type {self.type!r} is not an event of stage {self.stage!r}, whose types are"
                f" {', '.join(EVENT_STAGES[self.stage])}: drop one of the two filters"
            )
        _check_range(self.since_ms, self.until_ms)

    def types(self) -> tuple[str | None, ...]:
        """The event types this filter pages through, each on its own (None: any type)."""
        if self.type is not None:
            return (self.type,)
        if self.stage is not None:
            return EVENT_STAGES[self.stage]
        return (None,)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "next_cursor": self.next_cursor, "count": len(self.rows)}


def label_pair(label: str) -> tuple[str, str]:
    """``name=value`` → its parts, as ``turn_labels`` holds them (header names lowercased)."""
    name, sep, value = label.partition("=")
    name = name.strip()
    name = name if name == VERSION_LABEL else name.lower()
    if not sep or not _LABEL_NAME.match(name) or len(value.strip()) > 256:
        raise QueryError(
            "label must be name=value: a pair sent in x-custody-labels (e.g. asset=production),"
            f" or {VERSION_LABEL}=text for a label put on a version the turn made;"
            f" got {label[:80]!r}"
        )
    return name, value.strip()


def _check_range(since_ms: int | None, until_ms: int | None) -> None:
    if since_ms is not None and until_ms is not None and until_ms < since_ms:
        raise QueryError(f"until ({until_ms}) is before since ({since_ms}).")


# -- cursors ------------------------------------------------------------------------------------


def _filter_digest(kind: str, flt: Any) -> str:
    text = json.dumps([kind, asdict(flt)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def format_cursor(kind: str, flt: Any, key: list[Any]) -> str:
    """The opaque cursor continuing after ``key`` under these filters."""
    doc = {"k": kind, "f": _filter_digest(kind, flt), "after": key}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(kind: str, flt: Any, cursor: str) -> list[Any]:
    """The key a cursor continues after; ``QueryError`` for one not made by this query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
        key = doc["after"]
        ok = isinstance(doc, dict) and doc["k"] == kind and isinstance(key, list)
    except (ValueError, KeyError, TypeError) as exc:
        raise QueryError("cursor is not one this query returned: start again without it") from exc
    if not ok:
        raise QueryError(f"cursor is not one of a {kind} query: start again without it")
    if doc.get("f") != _filter_digest(kind, flt):
        raise QueryError(
            "cursor was issued for other filters: repeat the query with the filters it was"
            " issued for, or start again without the cursor"
        )
    return key  # type: ignore[no-any-return]


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be from 1 to {MAX_LIMIT}; got {limit}")
    return limit


# -- turns --------------------------------------------------------------------------------------


def _turns_of_reviewer(reviewer: str) -> Select[Any]:
    tasks, decisions = REVIEW_TASKS.c, REVIEW_DECISIONS.c
    return (
        select(tasks.turn_id)
        .select_from(REVIEW_DECISIONS.join(REVIEW_TASKS, tasks.task_id == decisions.task_id))
        .where(decisions.reviewer == reviewer)
    )


_SESSION_ID = re.compile(r"^ses_[0-9a-f]{24}$")


def _in_session(column: Any, flt: TurnFilter) -> Any:
    """``column`` names the session ``flt.session``: Custody's session id (``ses_…``, read
    straight from the index), or an ``x-custody-session`` value a client sent — the client's key
    of its sessions in ``edit_sessions`` (one per actor), or, for turns recorded before sessions
    existed, the value itself."""
    if _SESSION_ID.match(flt.session or ""):
        return column == flt.session
    keyed = select(EDIT_SESSIONS.c.session_id).where(EDIT_SESSIONS.c.client_key == flt.session)
    if flt.tenant is not None:
        keyed = keyed.where(EDIT_SESSIONS.c.tenant == flt.tenant)
    # One IN over "the value itself, or a session it keys" (not ``= value OR IN (…)``, which
    # keeps PostgreSQL off the session index: 160 ms against a few at 10⁶ turns).
    named = select(literal(flt.session, String).label("session_id")).union_all(keyed)
    return column.in_(named)


def turn_conditions(flt: TurnFilter) -> list[Any]:
    """The WHERE conditions of ``flt`` on ``turns`` (shared with prompt search and oversight)."""
    t = TURNS.c
    conds: list[Any] = []
    for column, value in (
        (t.tenant, flt.tenant),
        (t.actor, flt.actor),
        (t.model, flt.model),
        (t.status, flt.status),
        (t.outcome, flt.outcome),
    ):
        if value is not None:
            conds.append(column == value)
    if flt.session is not None:
        conds.append(_in_session(t.session_id, flt))
    if flt.since_ms is not None:
        conds.append(t.created_ms >= flt.since_ms)
    if flt.until_ms is not None:
        conds.append(t.created_ms < flt.until_ms)
    held = exists().where(REVIEW_TASKS.c.turn_id == t.turn_id)
    if flt.policy == "deny":
        conds.append(t.outcome.in_(DENY_REASONS))
    elif flt.policy == "review":
        conds.append(held)
    elif flt.policy == "allow":
        conds.extend([t.status == "released", ~held])
    if flt.stage is not None:
        conds.append(
            t.turn_id.in_(select(REVIEW_TASKS.c.turn_id).where(REVIEW_TASKS.c.stage == flt.stage))
        )
    if flt.reviewer is not None:
        conds.append(t.turn_id.in_(_turns_of_reviewer(flt.reviewer)))
    if flt.label is not None:
        conds.append(t.turn_id.in_(_turns_labelled(flt.tenant, flt.label)))
    return conds


def _turns_labelled(tenant: str | None, label: str) -> Select[Any]:
    name, value = label_pair(label)
    lab = TURN_LABELS.c
    query = select(lab.turn_id).where(lab.name == name, lab.value == value)
    return query.where(lab.tenant == tenant) if tenant is not None else query


TURN_COLUMNS = (
    "turn_id",
    "tenant",
    "actor",
    "session_id",
    "model",
    "status",
    "outcome",
    "upstream_status",
    "model_version",
    "finish_reason",
    "block_reason",
    "first_entry_index",
    "created_ms",
    "finished_ms",
)


def turns_page_query(flt: TurnFilter, *, after: list[Any] | None, limit: int) -> Select[Any]:
    """The SELECT of one page of turns, newest first (``tests`` EXPLAIN it).

    ``policy=deny`` is two outcomes: an ``IN`` of both would make the planner merge two index
    ranges and sort them, so each outcome pages from the index on its own and the two pages are
    merged (a ``UNION ALL`` of at most ``2 × limit`` rows)."""
    if flt.policy == "deny" and flt.outcome is None:
        parts = [
            select(_single_page(replace(flt, policy=None, outcome=r), after, limit).subquery())
            for r in DENY_REASONS
        ]
        merged = union_all(*parts).subquery()
        return (
            select(*(merged.c[name] for name in TURN_COLUMNS))
            .order_by(merged.c.created_ms.desc(), merged.c.turn_id.desc())
            .limit(limit)
        )
    return _single_page(flt, after, limit)


def _single_page(flt: TurnFilter, after: list[Any] | None, limit: int) -> Select[Any]:
    if flt.label is not None:
        return _label_page(flt, after, limit)
    t = TURNS.c
    query = select(*(t[name] for name in TURN_COLUMNS)).where(*turn_conditions(flt))
    if after is not None:
        query = query.where(tuple_(t.created_ms, t.turn_id) < tuple_(after[0], after[1]))
    return query.order_by(t.created_ms.desc(), t.turn_id.desc()).limit(limit)


def _label_page(flt: TurnFilter, after: list[Any] | None, limit: int) -> Select[Any]:
    """A page of one label's turns: walked in ``ix_turn_labels_q`` (tenant, name, value, then
    the paging key, repeated from the turn), each row joined to its ``turns`` row by key, where
    the other filters apply."""
    assert flt.label is not None
    name, value = label_pair(flt.label)
    lab, t = TURN_LABELS.c, TURNS.c
    conds: list[Any] = [lab.name == name, lab.value == value]
    if flt.tenant is not None:
        conds.append(lab.tenant == flt.tenant)
    if flt.since_ms is not None:
        conds.append(lab.created_ms >= flt.since_ms)
    if flt.until_ms is not None:
        conds.append(lab.created_ms < flt.until_ms)
    if after is not None:
        conds.append(tuple_(lab.created_ms, lab.turn_id) < tuple_(after[0], after[1]))
    # The label row's tenant and time are its turn's. Alone, the label needs nothing of
    # ``turns`` (repeating the tenant there only tempts the planner to join the tenant's turns
    # wholesale and sort them); with other filters the tenant leads their indexes.
    rest = replace(flt, label=None, since_ms=None, until_ms=None)
    if not any(v is not None for k, v in rest.used().items() if k != "tenant"):
        rest = replace(rest, tenant=None)
    conds.extend(turn_conditions(rest))
    return (
        select(*(t[name] for name in TURN_COLUMNS))
        .select_from(TURN_LABELS.join(TURNS, t.turn_id == lab.turn_id))
        .where(*conds)
        .order_by(lab.created_ms.desc(), lab.turn_id.desc())
        .limit(limit)
    )


def _turn_json(row: Any) -> dict[str, Any]:
    out = {name: row[i] for i, name in enumerate(TURN_COLUMNS)}
    out["session"] = out.pop("session_id")
    return out


def _attach_ledger_facts(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Each turn's ledger indexes (every entry of it), its outputs' hashes, its
    ``x-custody-labels`` (``labels``) and the labels of versions it made (``version_labels``),
    in three reads."""
    if not rows:
        return
    ids = [r["turn_id"] for r in rows]
    e, images, lab = LEDGER_ENTRIES.c, TURN_IMAGES.c, TURN_LABELS.c
    indexes: dict[str, list[int]] = {i: [] for i in ids}
    outputs: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    labels: dict[str, dict[str, str]] = {i: {} for i in ids}
    version_labels: dict[str, list[str]] = {i: [] for i in ids}
    with engine.connect() as conn:
        for turn_id, name, value in conn.execute(
            select(lab.turn_id, lab.name, lab.value)
            .where(lab.turn_id.in_(ids))
            .order_by(lab.turn_id, lab.name, lab.value)
        ):
            if name == VERSION_LABEL:
                version_labels[turn_id].append(value)
            else:
                labels[turn_id][name] = value
        for turn_id, idx in conn.execute(
            select(e.turn_id, e.idx).where(e.turn_id.in_(ids)).order_by(e.idx)
        ):
            indexes[turn_id].append(int(idx))
        for turn_id, sha, signed, manifest in conn.execute(
            select(images.turn_id, images.sha256, images.signed_sha256, images.manifest_sha256)
            .where(images.turn_id.in_(ids), images.direction == "output")
            .order_by(images.id)
        ):
            outputs[turn_id].append(
                {"upstream_sha256": sha, "signed_sha256": signed, "manifest_sha256": manifest}
            )
    for r in rows:
        r["ledger_indexes"] = indexes[r["turn_id"]]
        r["outputs"] = outputs[r["turn_id"]]
        r["labels"] = labels[r["turn_id"]]
        r["version_labels"] = version_labels[r["turn_id"]]


def query_turns(
    engine: Engine, flt: TurnFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page:
    """One page of turns matching ``flt``, newest first, each with its ledger indexes."""
    limit = _limit(limit)
    after = parse_cursor("turns", flt, cursor) if cursor else None
    with engine.connect() as conn:
        found = conn.execute(turns_page_query(flt, after=after, limit=limit + 1)).all()
    rows = [_turn_json(r) for r in found[:limit]]
    _attach_ledger_facts(engine, rows)
    more = len(found) > limit
    last = rows[-1] if rows else None
    key = [last["created_ms"], last["turn_id"]] if last else None
    return Page(rows, format_cursor("turns", flt, key) if more and key else None)


# -- events -------------------------------------------------------------------------------------


def events_page_query(flt: EventFilter, *, after: int | None, limit: int) -> Select[Any]:
    """The SELECT of one page of events, highest index first (``tests`` EXPLAIN it). A stage is
    several types: each pages from ``ix_ledger_entries_q_type`` on its own and the pages (at
    most ``types × limit`` rows) are merged, so no plan sorts the tenant's whole log."""
    types = flt.types()
    if len(types) == 1:
        return _event_page(flt, types[0], after, limit)
    parts = [select(_event_page(flt, kind, after, limit).subquery()) for kind in types]
    merged = union_all(*parts).subquery()
    return (
        select(merged.c.idx, merged.c.time_ms, merged.c.leaf, merged.c.leaf_hash)
        .order_by(merged.c.idx.desc())
        .limit(limit)
    )


def _event_page(flt: EventFilter, kind: str | None, after: int | None, limit: int) -> Select[Any]:
    e, t = LEDGER_ENTRIES.c, TURNS.c
    conds: list[Any] = []
    if flt.tenant is not None:
        conds.append(e.tenant == flt.tenant)
    if kind is not None:
        conds.append(e.type == kind)
    if flt.turn is not None:
        conds.append(e.turn_id == flt.turn)
    if flt.since_ms is not None:
        conds.append(e.time_ms >= flt.since_ms)
    if flt.until_ms is not None:
        conds.append(e.time_ms < flt.until_ms)
    by_turn = TurnFilter(tenant=flt.tenant, actor=flt.actor, session=flt.session, model=flt.model)
    if any(v is not None for v in (flt.actor, flt.session, flt.model)):
        conds.append(e.turn_id.in_(select(t.turn_id).where(*turn_conditions(by_turn))))
    if flt.reviewer is not None:
        conds.append(e.turn_id.in_(_turns_of_reviewer(flt.reviewer)))
    if flt.label is not None:
        # A correlated probe of ``turn_labels``' key per event, not ``IN`` (the planner would
        # fetch every event of every labelled turn and sort them): the page walks the ledger
        # index and stops after ``limit`` labelled events.
        name, value = label_pair(flt.label)
        lab = TURN_LABELS.c
        probe = exists().where(lab.turn_id == e.turn_id, lab.name == name, lab.value == value)
        conds.append(probe.where(lab.tenant == flt.tenant) if flt.tenant is not None else probe)
    if after is not None:
        conds.append(e.idx < after)
    return (
        select(e.idx, e.time_ms, e.leaf, e.leaf_hash)
        .where(*conds)
        .order_by(e.idx.desc())
        .limit(limit)
    )


def query_events(
    engine: Engine, flt: EventFilter, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page:
    """One page of ledger events matching ``flt``, newest (highest index) first."""
    limit = _limit(limit)
    key = parse_cursor("events", flt, cursor) if cursor else None
    after = None
    if key is not None:
        if len(key) != 1 or not isinstance(key[0], int):
            raise QueryError("cursor is not one this query returned: start again without it")
        after = key[0]
    with engine.connect() as conn:
        found = conn.execute(events_page_query(flt, after=after, limit=limit + 1)).all()
    rows = []
    for idx, time_ms, leaf, lh in found[:limit]:
        doc = decode_leaf(bytes(leaf))
        rows.append(
            {
                "index": int(idx),
                "time_ms": int(time_ms),
                "type": doc["type"],
                "tenant": doc["tenant"],
                "actor": doc["actor"],
                "session": doc.get("session"),
                "turn": doc.get("turn"),
                "body": doc["body"],
                "leaf_hash": base64.b64encode(bytes(lh)).decode(),
            }
        )
    more = len(found) > limit
    nxt = format_cursor("events", flt, [rows[-1]["index"]]) if more and rows else None
    return Page(rows, nxt)


# -- images -------------------------------------------------------------------------------------


def images_by_hash(engine: Engine, sha256: str, *, tenant: str | None) -> list[dict[str, Any]]:
    """Every input or output image with this SHA-256 (as sent, as the upstream made it, or as
    Custody signed it) in ``tenant``'s turns, newest first, each with its turn's ledger indexes."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise QueryError("sha256 must be 64 lowercase hexadecimal digits")
    i, t = TURN_IMAGES.c, TURNS.c
    conds: list[Any] = [or_(i.sha256 == sha256, i.signed_sha256 == sha256)]
    if tenant is not None:
        conds.append(t.tenant == tenant)
    query = (
        select(
            i.turn_id,
            i.direction,
            i.role,
            i.mime_type,
            i.sha256,
            i.signed_sha256,
            i.manifest_sha256,
            i.size,
            t.tenant,
            t.actor,
            t.session_id,
            t.model,
            t.status,
            t.created_ms,
        )
        .select_from(TURN_IMAGES.join(TURNS, t.turn_id == i.turn_id))
        .where(*conds)
        .order_by(t.created_ms.desc(), i.id)
        .limit(MAX_LIMIT)
    )
    with engine.connect() as conn:
        found = conn.execute(query).all()
    rows = [
        {
            "turn_id": r.turn_id,
            "direction": r.direction,
            "role": r.role,
            "mime_type": r.mime_type,
            "sha256": r.sha256,
            "signed_sha256": r.signed_sha256,
            "manifest_sha256": r.manifest_sha256,
            "size": int(r.size),
            "matched": "signed" if r.signed_sha256 == sha256 else "content",
            "tenant": r.tenant,
            "actor": r.actor,
            "session": r.session_id,
            "model": r.model,
            "status": r.status,
            "created_ms": int(r.created_ms),
        }
        for r in found
    ]
    turns = {r["turn_id"]: {"turn_id": r["turn_id"]} for r in rows}
    _attach_ledger_facts(engine, list(turns.values()))
    for r in rows:
        r["ledger_indexes"] = turns[r["turn_id"]]["ledger_indexes"]
    return rows
