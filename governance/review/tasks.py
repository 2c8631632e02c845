"""Review tasks and decisions as data: what the desk reads, the API lists and the pipeline gets.

Data only (no database access): ``ReviewTask`` and ``Decision`` are built from rows of
``storage.schema.reviews``; ``Approval`` is what a release's manifest says about one approval;
``HeldTurn`` is what the pipeline hands ``ReviewDesk.open``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from governance.review.errors import ReviewError
from governance.review.shown import Shown

OPEN = ("pending", "escalated")
CLOSED = ("approved", "rejected", "changes_requested", "expired")
STATUSES = (*OPEN, *CLOSED)
STAGES = ("request", "response")


@dataclass(frozen=True)
class HeldTurn:
    """What the pipeline knows about a turn policy holds, for ``ReviewDesk.open``."""

    tenant: str
    turn_id: str
    stage: Literal["request", "response"]
    requester: str  # the turn's actor
    request_hash: str  # SHA-256 hex of the request as received (route, model, body)
    shown: Shown
    reasons: tuple[str, ...] = ()
    requester_key: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Decision:
    """One reviewer's recorded decision."""

    decision_id: str
    task_id: str
    reviewer: str
    reviewer_key: str | None
    group: str
    round: int
    decision: str
    comment: str
    shown_digest: str
    credit: str
    time_ms: int
    ledger_index: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.decision_id,
            "reviewer": self.reviewer,
            "group": self.group,
            "round": self.round,
            "decision": self.decision,
            "comment": self.comment,
            "shown_digest": self.shown_digest,
            "credit": self.credit,
            "time_ms": self.time_ms,
            "ledger_index": self.ledger_index,
        }


@dataclass(frozen=True)
class Approval:
    """What an approved release's manifest says about one approval: the reviewer as the policy
    allows (``identity``: name, pseudonym ``key:<key id>``, or a salted commitment to the name),
    when, and the digest of what they were shown."""

    credit: str
    identity: str
    decision_id: str
    time_ms: int
    shown_digest: str
    group: str
    ledger_index: int | None


@dataclass(frozen=True)
class ReviewTask:
    """A task as read from the database, with its decisions when asked for."""

    task_id: str
    tenant: str
    turn_id: str
    session: str | None
    stage: str
    requester: str
    requester_key: str | None
    reviewer_group: str
    approvals_required: int
    deadline_s: int
    deadline_ms: int
    on_deadline: str
    escalate_to: str | None
    reviewer_identity: str
    round: int
    status: str
    claimed_by: str | None
    claimed_until_ms: int | None
    request_hash: str
    shown: dict[str, Any]
    shown_digest: str
    reasons: tuple[str, ...]
    created_ms: int
    decided_ms: int | None
    reason: str | None
    outcome_index: int | None
    approvals: int = 0
    decisions: tuple[Decision, ...] = field(default=())

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def settled(self) -> bool:
        """Closed, and its outcome is in the ledger: the pipeline may act on it."""
        return self.status in CLOSED and self.outcome_index is not None

    def approvals_for_manifest(self) -> list[Approval]:
        """The approvals of the round that approved the task (empty unless approved)."""
        if self.status != "approved":
            return []
        return [
            Approval(
                d.credit,
                self.reviewer_identity,
                d.decision_id,
                d.time_ms,
                d.shown_digest,
                d.group,
                d.ledger_index,
            )
            for d in self.decisions
            if d.decision == "approve" and d.round == self.round
        ]

    def to_json(self, *, with_decisions: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.task_id,
            "tenant": self.tenant,
            "turn": self.turn_id,
            "session": self.session,
            "stage": self.stage,
            "requester": self.requester,
            "group": self.reviewer_group,
            "approvals": self.approvals,
            "approvals_required": self.approvals_required,
            "deadline_ms": self.deadline_ms,
            "on_deadline": self.on_deadline,
            "escalate_to": self.escalate_to,
            "reviewer_identity": self.reviewer_identity,
            "round": self.round,
            "status": self.status,
            "claimed_by": self.claimed_by,
            "claimed_until_ms": self.claimed_until_ms,
            "shown": self.shown,
            "shown_digest": self.shown_digest,
            "reasons": list(self.reasons),
            "created_ms": self.created_ms,
            "decided_ms": self.decided_ms,
            "reason": self.reason,
            "outcome_index": self.outcome_index,
        }
        if with_decisions:
            doc["decisions"] = [d.to_json() for d in self.decisions]
        return doc


def task_from_row(row: Any, approvals: int = 0, decisions: Sequence[Decision] = ()) -> ReviewTask:
    return ReviewTask(
        task_id=row.task_id,
        tenant=row.tenant,
        turn_id=row.turn_id,
        session=row.session,
        stage=row.stage,
        requester=row.requester,
        requester_key=row.requester_key,
        reviewer_group=row.reviewer_group,
        approvals_required=int(row.approvals_required),
        deadline_s=int(row.deadline_s),
        deadline_ms=int(row.deadline_ms),
        on_deadline=row.on_deadline,
        escalate_to=row.escalate_to,
        reviewer_identity=row.reviewer_identity,
        round=int(row.round),
        status=row.status,
        claimed_by=row.claimed_by,
        claimed_until_ms=row.claimed_until_ms,
        request_hash=row.request_hash,
        shown=json.loads(row.shown),
        shown_digest=row.shown_digest,
        reasons=tuple(json.loads(row.reasons)),
        created_ms=int(row.created_ms),
        decided_ms=row.decided_ms,
        reason=row.reason,
        outcome_index=row.outcome_index,
        approvals=approvals,
        decisions=tuple(decisions),
    )


def decision_from_row(row: Any) -> Decision:
    return Decision(
        row.decision_id,
        row.task_id,
        row.reviewer,
        row.reviewer_key,
        row.reviewer_group,
        int(row.round),
        row.decision,
        row.comment,
        row.shown_digest,
        row.credit,
        int(row.time_ms),
        row.ledger_index,
    )


@dataclass(frozen=True)
class QueueFilter:
    """Which tasks a queue shows. ``tenant`` None: every tenant (an operator)."""

    tenant: str | None
    status: str | None = "open"  # a status, "open" (pending or escalated), or None: all
    group: str | None = None
    stage: str | None = None
    requester: str | None = None
    due_before_ms: int | None = None
    limit: int = 100


def not_found(task_id: str) -> ReviewError:
    # The same answer for a task that does not exist and for another tenant's: no existence leak.
    return ReviewError(
        404,
        f"There is no review task {task_id!r} in your tenant: list the queue with"
        " GET /api/v1/reviews.",
        "REVIEW_NOT_FOUND",
    )
