"""The review desk: open a task for a held turn, claim it, decide it, wait for it, expire it.

Rules (each refusal is a ``ReviewError`` with the status an API answers with):

- separation of duties: the turn's requester never decides it (by actor, whatever key or
  account they use); a reviewer decides a task once (one reviewer counts once); a decider holds
  the ``reviewer`` role and is a member of the task's group (``governance.review.groups``);
- ``approvals_required`` distinct approvals approve; one ``reject`` rejects; one
  ``request_changes`` closes it as ``changes_requested``;
- a decision carries the ``shown_digest`` of the task (``governance.review.shown``): any other
  digest is refused, so a decision cannot be moved to other content;
- a claim holds a task for one reviewer for ``CLAIM_MS``; others cannot claim or decide it
  meanwhile; a decision that leaves the task open releases the claim;
- at its deadline an open task is rejected (``expired``) or, once, escalated to
  ``escalate_to`` with a fresh deadline (approvals restart: they count within a round).

Every step is a ledger event (``review.opened``, ``review.claimed``, ``review.decided`` and the
outcome: ``review.approved``, ``review.rejected``, ``review.changes_requested``,
``review.expired``, ``review.escalated``; refusals ``review.refused``). State changes are
compare-and-set updates in one transaction (with the task row locked on PostgreSQL; SQLite's
writers are serialised by ``BEGIN IMMEDIATE``), so any number of gateway processes share one
database; the outcome's event is appended next and its index stored in ``outcome_index``, and
``wait`` reports an outcome only once it is recorded: nothing is released on an approval the
ledger does not hold. Comments go to the blob store; leaves hold commitments to them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any, Literal

from sqlalchemy import Connection, Engine, func, insert, select, update

from governance.auth.keys import now_ms
from governance.auth.principal import Principal
from governance.ledger_vocabulary import ledger_event
from governance.review.errors import ReviewError
from governance.review.groups import is_member
from governance.review.tasks import (
    CLOSED,
    OPEN,
    STAGES,
    HeldTurn,
    QueueFilter,
    ReviewTask,
    decision_from_row,
    not_found,
    task_from_row,
)
from governance.review.terms import ReviewTerms
from governance.review.webhooks import delivery_side_rows, enqueue
from storage.blobs import Commitments
from storage.ledger.events import LedgerEvent, SideRows
from storage.ledger.log import Ledger
from storage.schema.reviews import REVIEW_DECISIONS as DECISIONS
from storage.schema.reviews import REVIEW_TASKS as TASKS

Verdict = Literal["approve", "reject", "request_changes"]
VERDICTS: tuple[Verdict, ...] = ("approve", "reject", "request_changes")
CLAIM_MS = 15 * 60_000
MAX_COMMENT_CHARS = 10_000
MAX_REASONS = 32
MAX_REASON_CHARS = 512
REPAIR_AFTER_MS = 30_000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

TASK_COLUMNS = (
    "task_id",
    "tenant",
    "turn_id",
    "session",
    "stage",
    "requester",
    "requester_key",
    "reviewer_group",
    "approvals_required",
    "deadline_s",
    "deadline_ms",
    "on_deadline",
    "escalate_to",
    "reviewer_identity",
    "round",
    "status",
    "request_hash",
    "shown",
    "shown_digest",
    "reasons",
    "created_ms",
)


class ReviewDesk:
    """Review tasks on one database, shared by every gateway process that opens it."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        commitments: Commitments,
        *,
        clock: Callable[[], int] = now_ms,
        read_engine: Engine | None = None,
    ) -> None:
        self.engine = engine
        # Reads that change nothing (a task, the queue, what is due) go through ``read_engine``:
        # on SQLite every transaction of ``engine`` takes the write lock at BEGIN, so a read
        # there waited for the ledger's appends (and their fsyncs) and they for it.
        self.reader = read_engine or engine
        self.ledger = ledger
        self.commitments = commitments
        self.clock = clock

    # --- opening --------------------------------------------------------------------------------

    def open(self, held: HeldTurn, obligations: Mapping[str, Any]) -> ReviewTask:
        """Open a task for ``held`` on the terms of the policy's ``obligations``; its row, its
        ``review.opened`` event and its webhook deliveries commit together."""
        terms = ReviewTerms.from_obligations(obligations)
        if held.stage not in STAGES:
            raise ReviewError(400, "A review stage is 'request' or 'response'.", "BAD_STAGE")
        if not _HEX64.match(held.request_hash):
            raise ReviewError(
                400, "request_hash is the SHA-256 hex of the request.", "BAD_REQUEST_HASH"
            )
        reasons = [r[:MAX_REASON_CHARS] for r in held.reasons[:MAX_REASONS]]
        now = self.clock()
        task_id = uuid.uuid4().hex
        shown = held.shown.to_json()
        row = (
            task_id,
            held.tenant,
            held.turn_id,
            held.session,
            held.stage,
            held.requester,
            held.requester_key,
            terms.reviewer_group,
            terms.approvals_required,
            terms.deadline_s,
            now + terms.deadline_s * 1000,
            terms.on_deadline,
            terms.escalate_to,
            terms.reviewer_identity,
            0,
            "pending",
            held.request_hash,
            json.dumps(shown, sort_keys=True),
            held.shown.digest,
            json.dumps(reasons),
            now,
        )
        unset = dict.fromkeys(
            ("claimed_by", "claimed_until_ms", "decided_ms", "reason", "outcome_index")
        )
        task = task_from_row(SimpleNamespace(**unset, **dict(zip(TASK_COLUMNS, row, strict=True))))
        body = {
            "task": task_id,
            "stage": held.stage,
            "group": terms.reviewer_group,
            "approvals_required": terms.approvals_required,
            "deadline_ms": task.deadline_ms,
            "on_deadline": terms.on_deadline,
            "escalate_to": terms.escalate_to,
            "reviewer_identity": terms.reviewer_identity,
            "shown_digest": task.shown_digest,
            "reasons": reasons,
        }
        event = ledger_event(
            "review.opened",
            body,
            tenant=held.tenant,
            actor=held.requester,
            session=held.session,
            turn=held.turn_id,
        )
        side = [
            SideRows("review_tasks", TASK_COLUMNS, [row]),
            *delivery_side_rows(
                self.engine, held.tenant, [("review.opened", task_id, _hook_data(task))]
            ),
        ]
        self.ledger.append([event], side)
        return task

    # --- reading --------------------------------------------------------------------------------

    def get(self, task_id: str, *, decisions: bool = True) -> ReviewTask | None:
        with self.reader.connect() as conn:
            return self._read(conn, task_id, decisions=decisions)

    def _read(self, conn: Connection, task_id: str, *, decisions: bool = True) -> ReviewTask | None:
        row = conn.execute(select(TASKS).where(TASKS.c.task_id == task_id)).first()
        if row is None:
            return None
        votes = [
            decision_from_row(d)
            for d in conn.execute(
                select(DECISIONS)
                .where(DECISIONS.c.task_id == task_id)
                .order_by(DECISIONS.c.time_ms, DECISIONS.c.decision_id)
            )
        ]
        approvals = sum(1 for v in votes if v.decision == "approve" and v.round == row.round)
        return task_from_row(row, approvals, votes if decisions else ())

    def find_by_request_hash(self, tenant: str, request_hash: str) -> ReviewTask | None:
        """The newest task of ``tenant`` opened for a request with this hash (the identical
        request sent again), with its decisions; None when there is none."""
        with self.reader.connect() as conn:
            found = conn.execute(
                select(TASKS.c.task_id)
                .where(TASKS.c.tenant == tenant, TASKS.c.request_hash == request_hash)
                .order_by(TASKS.c.created_ms.desc(), TASKS.c.task_id.desc())
                .limit(1)
            ).first()
            return None if found is None else self._read(conn, found.task_id)

    def tasks_for_turn(self, turn_id: str) -> list[ReviewTask]:
        with self.reader.connect() as conn:
            ids = conn.execute(
                select(TASKS.c.task_id)
                .where(TASKS.c.turn_id == turn_id)
                .order_by(TASKS.c.created_ms, TASKS.c.task_id)
            ).all()
            return [t for (i,) in ids if (t := self._read(conn, i)) is not None]

    def queue(self, flt: QueueFilter) -> list[ReviewTask]:
        """Tasks matching ``flt``, soonest deadline first, with their approval counts."""
        query = select(TASKS)
        if flt.tenant is not None:
            query = query.where(TASKS.c.tenant == flt.tenant)
        if flt.status == "open":
            query = query.where(TASKS.c.status.in_(OPEN))
        elif flt.status is not None:
            query = query.where(TASKS.c.status == flt.status)
        if flt.group is not None:
            query = query.where(TASKS.c.reviewer_group == flt.group)
        if flt.stage is not None:
            query = query.where(TASKS.c.stage == flt.stage)
        if flt.requester is not None:
            query = query.where(TASKS.c.requester == flt.requester)
        if flt.due_before_ms is not None:
            query = query.where(TASKS.c.deadline_ms < flt.due_before_ms)
        query = query.order_by(TASKS.c.deadline_ms, TASKS.c.task_id).limit(flt.limit)
        with self.reader.connect() as conn:
            rows = conn.execute(query).all()
            counts: dict[str, int] = {}
            if rows:
                counted = conn.execute(
                    select(DECISIONS.c.task_id, DECISIONS.c.round, func.count())
                    .where(
                        DECISIONS.c.task_id.in_([r.task_id for r in rows]),
                        DECISIONS.c.decision == "approve",
                    )
                    .group_by(DECISIONS.c.task_id, DECISIONS.c.round)
                )
                rounds = {r.task_id: r.round for r in rows}
                for task_id, round_, n in counted:
                    if rounds.get(task_id) == round_:
                        counts[task_id] = int(n)
        return [task_from_row(r, counts.get(r.task_id, 0)) for r in rows]

    # --- claiming and deciding ------------------------------------------------------------------

    def _eligible(self, conn: Connection, task: ReviewTask, reviewer: Principal) -> None:
        """Refuse a reviewer who may not decide ``task``."""
        if task.tenant != reviewer.tenant:
            raise not_found(task.task_id)
        if not reviewer.has_role("reviewer"):
            raise ReviewError(
                403,
                f"Deciding a review needs the 'reviewer' role; {reviewer.actor!r} has"
                f" {', '.join(sorted(reviewer.roles))}.",
                "ROLE_REQUIRED",
            )
        if reviewer.actor == task.requester:
            raise ReviewError(
                403,
                f"{reviewer.actor!r} requested this turn and cannot review it (separation of"
                " duties): another member of the group must decide it.",
                "OWN_TURN",
            )
        if not is_member(conn, tenant=task.tenant, group=task.reviewer_group, actor=reviewer.actor):
            raise ReviewError(
                403,
                f"{reviewer.actor!r} is not a member of the group {task.reviewer_group!r} this"
                " task is assigned to; a tenant admin adds members (POST"
                f" /api/v1/review-groups/{task.reviewer_group}/members).",
                "NOT_IN_GROUP",
            )
        if not task.is_open:
            raise ReviewError(409, f"This task is already closed ({task.status}).", "REVIEW_CLOSED")

    def _claimed_by_other(self, task: ReviewTask, actor: str, now: int) -> ReviewError | None:
        if task.claimed_by and task.claimed_by != actor and (task.claimed_until_ms or 0) > now:
            return ReviewError(
                409,
                f"{task.claimed_by!r} has claimed this task until {task.claimed_until_ms} (ms"
                " since the epoch); pick another task or wait for the claim to lapse.",
                "REVIEW_CLAIMED",
            )
        return None

    def claim(self, task_id: str, reviewer: Principal, *, for_ms: int = CLAIM_MS) -> ReviewTask:
        """Hold the task for ``reviewer`` for ``for_ms``; ``review.claimed`` is recorded."""
        now = self.clock()
        with self.engine.begin() as conn:
            task = self._locked(conn, task_id)
            self._eligible(conn, task, reviewer)
            if any(d.reviewer == reviewer.actor for d in task.decisions):
                raise _already_decided(reviewer)
            clash = self._claimed_by_other(task, reviewer.actor, now)
            if clash:
                raise clash
            until = now + for_ms
            conn.execute(
                update(TASKS)
                .where(TASKS.c.task_id == task_id)
                .values(claimed_by=reviewer.actor, claimed_until_ms=until)
            )
        self.ledger.append(
            [
                self._event(
                    task,
                    "review.claimed",
                    reviewer.actor,
                    {"task": task_id, "round": task.round, "claimed_until_ms": until},
                )
            ]
        )
        return self._require(task_id)

    def decide(
        self,
        task_id: str,
        reviewer: Principal,
        decision: str,
        comment: str,
        shown_digest: str,
    ) -> ReviewTask:
        """Record ``reviewer``'s decision; closes the task when it settles it."""
        if decision not in VERDICTS:
            raise ReviewError(
                400, "A decision is 'approve', 'reject' or 'request_changes'.", "BAD_DECISION"
            )
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
            raise ReviewError(
                400, f"A comment is at most {MAX_COMMENT_CHARS} characters.", "BAD_COMMENT"
            )
        if decision != "approve" and not comment.strip():
            raise ReviewError(
                400,
                "Say why (a comment): the requester is told the reason of a rejection or of a"
                " request for changes.",
                "COMMENT_REQUIRED",
            )
        task = self._require(task_id)
        with self.engine.connect() as conn:
            self._eligible(conn, task, reviewer)
        if shown_digest != task.shown_digest:
            raise ReviewError(
                409,
                "This decision names other content than the task shows: its shown_digest is"
                f" not {task.shown_digest}. Reload the task and decide on what it shows now.",
                "SHOWN_MISMATCH",
            )
        # Blobs first (their own transactions), so the leaves that commit to them never dangle.
        credit = self._credit(task, reviewer)
        comment_ref = (
            self.commitments.put_committed(comment.encode()).commitment if comment else None
        )
        now = self.clock()
        decision_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            task = self._locked(conn, task_id)
            self._eligible(conn, task, reviewer)
            if task.shown_digest != shown_digest:
                raise ReviewError(409, "The task changed; reload it.", "SHOWN_MISMATCH")
            if any(d.reviewer == reviewer.actor for d in task.decisions):
                raise _already_decided(reviewer)
            clash = self._claimed_by_other(task, reviewer.actor, now)
            if clash:
                raise clash
            conn.execute(
                insert(DECISIONS).values(
                    decision_id=decision_id,
                    task_id=task_id,
                    reviewer=reviewer.actor,
                    reviewer_key=reviewer.key_id,
                    reviewer_group=task.reviewer_group,
                    round=task.round,
                    decision=decision,
                    comment=comment,
                    shown_digest=shown_digest,
                    credit=credit,
                    time_ms=now,
                )
            )
            approvals = task.approvals + (1 if decision == "approve" else 0)
            status = {"reject": "rejected", "request_changes": "changes_requested"}.get(
                decision, "approved" if approvals >= task.approvals_required else task.status
            )
            closing = status in CLOSED
            values: dict[str, Any] = {"claimed_by": None, "claimed_until_ms": None}
            if closing:
                values.update(
                    status=status, decided_ms=now, reason=comment or f"{decision} by reviewer"
                )
            conn.execute(update(TASKS).where(TASKS.c.task_id == task_id).values(**values))
            after = self._read(conn, task_id)
            assert after is not None
            hooks: list[tuple[str, str | None, dict[str, Any]]] = [
                ("review.decided", task_id, _hook_data(after, decision=decision, by=reviewer))
            ]
            if closing:
                hooks.append((f"review.{status}", task_id, _hook_data(after)))
            enqueue(conn, task.tenant, hooks)
        body = {
            "task": task_id,
            "decision_id": decision_id,
            "stage": task.stage,
            "round": task.round,
            "group": task.reviewer_group,
            "decision": decision,
            "reviewer_key": reviewer.key_id,
            "credit": credit,
            "shown_digest": shown_digest,
            "comment": comment_ref,
            "comment_chars": len(comment),
            "approvals": approvals,
            "approvals_required": task.approvals_required,
        }
        events = [self._event(task, "review.decided", reviewer.actor, body)]
        if closing:
            events.append(
                self._event(
                    task,
                    f"review.{status}",
                    reviewer.actor,
                    {
                        "task": task_id,
                        "decision_id": decision_id,
                        "round": task.round,
                        "approvals": approvals,
                        "shown_digest": shown_digest,
                    },
                )
            )
        entries = self.ledger.append(events)
        with self.engine.begin() as conn:
            conn.execute(
                update(DECISIONS)
                .where(DECISIONS.c.decision_id == decision_id)
                .values(ledger_index=entries[0].index)
            )
            if closing:
                conn.execute(
                    update(TASKS)
                    .where(TASKS.c.task_id == task_id)
                    .values(outcome_index=entries[-1].index)
                )
        return self._require(task_id)

    def _credit(self, task: ReviewTask, reviewer: Principal) -> str:
        """How the manifest names ``reviewer`` under the task's ``reviewer_identity``: the
        actor; ``key:<key id>`` (which the tenant resolves with its key list, outsiders
        cannot); or a salted commitment to the actor, which Custody can open and erase."""
        if task.reviewer_identity == "pseudonym":
            return f"key:{reviewer.key_id}"
        if task.reviewer_identity == "commitment":
            return self.commitments.put_committed(reviewer.actor.encode()).commitment
        return reviewer.actor

    def _locked(self, conn: Connection, task_id: str) -> ReviewTask:
        query = select(TASKS.c.task_id).where(TASKS.c.task_id == task_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        if conn.execute(query).first() is None:
            raise not_found(task_id)
        task = self._read(conn, task_id)
        assert task is not None
        return task

    def _require(self, task_id: str) -> ReviewTask:
        task = self.get(task_id)
        if task is None:
            raise not_found(task_id)
        return task

    def _event(self, task: ReviewTask, type_: str, actor: str, body: dict[str, Any]) -> LedgerEvent:
        return ledger_event(
            type_, body, tenant=task.tenant, actor=actor, session=task.session, turn=task.turn_id
        )

    # --- waiting --------------------------------------------------------------------------------

    async def wait(self, task_id: str, timeout_s: float, *, poll_s: float = 0.25) -> ReviewTask:
        """The task once it is settled (closed and its outcome recorded), or as it stands when
        ``timeout_s`` passes. Polls the database, so a decision taken by any process on the
        same database ends the wait."""
        deadline = time.monotonic() + max(timeout_s, 0)
        while True:
            task = await asyncio.to_thread(self._require, task_id)
            if task.settled or time.monotonic() >= deadline:
                return task
            await asyncio.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))

    # --- deadlines ------------------------------------------------------------------------------

    def apply_deadlines(self) -> list[tuple[str, str]]:
        """Expire or escalate every open task past its deadline; (task id, new status) for each
        this process changed. A compare-and-set on the deadline makes each change happen once
        across processes."""
        now = self.clock()
        with self.reader.connect() as conn:
            due = conn.execute(
                select(TASKS.c.task_id)
                .where(TASKS.c.status.in_(OPEN), TASKS.c.deadline_ms <= now)
                .order_by(TASKS.c.deadline_ms)
                .limit(100)
            ).all()
        changed = []
        for (task_id,) in due:
            outcome = self._apply_deadline(task_id, now)
            if outcome:
                changed.append((task_id, outcome))
        changed.extend(self._record_unrecorded(now))
        return changed

    def _apply_deadline(self, task_id: str, now: int) -> str | None:
        with self.engine.begin() as conn:
            task = self._locked(conn, task_id)
            if not task.is_open or task.deadline_ms > now:
                return None
            escalate = task.on_deadline == "escalate" and task.escalate_to
            if escalate:
                values: dict[str, Any] = {
                    "status": "escalated",
                    "reviewer_group": task.escalate_to,
                    "escalate_to": None,
                    "on_deadline": "reject",
                    "round": task.round + 1,
                    "deadline_ms": now + task.deadline_s * 1000,
                    "claimed_by": None,
                    "claimed_until_ms": None,
                }
                status = "escalated"
            else:
                status = "expired"
                values = {
                    "status": status,
                    "decided_ms": now,
                    "reason": "No decision was taken before the review deadline.",
                    "claimed_by": None,
                    "claimed_until_ms": None,
                }
            won = conn.execute(
                update(TASKS)
                .where(
                    TASKS.c.task_id == task_id,
                    TASKS.c.status == task.status,
                    TASKS.c.deadline_ms == task.deadline_ms,
                )
                .values(**values)
            ).rowcount
            if not won:
                return None
            after = self._read(conn, task_id)
            assert after is not None
            enqueue(conn, task.tenant, [(f"review.{status}", task_id, _hook_data(after))])
        body: dict[str, Any] = {
            "task": task_id,
            "round": task.round,
            "group": task.reviewer_group,
            "deadline_ms": task.deadline_ms,
            "approvals": task.approvals,
            "approvals_required": task.approvals_required,
        }
        if escalate:
            body.update(escalated_to=task.escalate_to, new_deadline_ms=after.deadline_ms)
        entries = self.ledger.append([self._event(task, f"review.{status}", "custody", body)])
        if not escalate:
            with self.engine.begin() as conn:
                conn.execute(
                    update(TASKS)
                    .where(TASKS.c.task_id == task_id)
                    .values(outcome_index=entries[0].index)
                )
        return status

    def _record_unrecorded(self, now: int) -> list[tuple[str, str]]:
        """Append the outcome event of tasks closed long ago whose own append never happened
        (their process died between the two): until then they are held, never released."""
        with self.reader.connect() as conn:
            stale = conn.execute(
                select(TASKS)
                .where(
                    TASKS.c.status.in_(CLOSED),
                    TASKS.c.outcome_index.is_(None),
                    TASKS.c.decided_ms < now - REPAIR_AFTER_MS,
                )
                .limit(100)
            ).all()
        repaired = []
        for row in stale:
            task = task_from_row(row)
            body = {"task": task.task_id, "round": task.round, "recorded_late": True}
            entry = self.ledger.append(
                [self._event(task, f"review.{task.status}", "custody", body)]
            )[0]
            with self.engine.begin() as conn:
                conn.execute(
                    update(TASKS)
                    .where(TASKS.c.task_id == task.task_id, TASKS.c.outcome_index.is_(None))
                    .values(outcome_index=entry.index)
                )
            repaired.append((task.task_id, task.status))
        return repaired

    # --- refusals -------------------------------------------------------------------------------

    def record_refusal(
        self, principal: Principal, action: str, task_id: str | None, err: ReviewError
    ) -> None:
        """``review.refused``: who was refused what on which task id (as the caller named it),
        and why; recorded in the caller's tenant, whichever tenant the task belongs to."""
        body = {
            "action": action[:64],
            "task": (task_id or "")[:64] or None,
            "code": err.code,
            "reason": err.reason,
            "message": err.message[:1024],
        }
        self.ledger.append(
            [ledger_event("review.refused", body, tenant=principal.tenant, actor=principal.actor)]
        )


def _already_decided(reviewer: Principal) -> ReviewError:
    return ReviewError(
        409,
        f"{reviewer.actor!r} has already decided this task; one reviewer counts once.",
        "ALREADY_DECIDED",
    )


def _hook_data(
    task: ReviewTask, *, decision: str | None = None, by: Principal | None = None
) -> dict[str, Any]:
    """What a webhook says about a task: enough to act on, no content (the receiver fetches the
    task with GET /api/v1/reviews/{id})."""
    data: dict[str, Any] = {
        "task": task.task_id,
        "turn": task.turn_id,
        "stage": task.stage,
        "status": task.status,
        "group": task.reviewer_group,
        "requester": task.requester,
        "approvals": task.approvals,
        "approvals_required": task.approvals_required,
        "deadline_ms": task.deadline_ms,
        "reason": task.reason,
        "shown_digest": task.shown_digest,
    }
    if decision is not None:
        data["decision"] = decision
        data["reviewer"] = by.actor if by else None
    return data
