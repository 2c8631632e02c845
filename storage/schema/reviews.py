"""Review tasks, their decisions, reviewer groups and review webhooks (migration ``0006_reviews``).

A task is one held turn waiting for people: which group decides, how many distinct approvals
it needs, when its deadline falls and what happens then. ``shown`` is the JSON of what the
reviewer is shown (digests or commitments of the request, prompt, inputs, masks and held
outputs) and ``shown_digest`` the SHA-256 of its RFC 8785 form: every decision commits to that
digest, so a decision cannot be moved to other content. ``outcome_index`` is the ledger index of
the event that closed or escalated the task: a waiting caller acts on an outcome only once it is
recorded. ``round`` counts escalations; approvals count within one round.

A webhook's ``secret`` is kept in the clear because Custody signs with it (HMAC); it is never
listed, logged or put in a ledger event. Deliveries are an outbox: rows written with the change
they announce, sent and retried by a background job in whichever process claims them first.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


class ReviewTask(SQLModel, table=True):
    """One held turn at one stage (``request``: before the call; ``response``: before release)."""

    __tablename__ = "review_tasks"
    __table_args__ = (
        Index("ix_review_tasks_tenant_status", "tenant", "status"),
        Index("ix_review_tasks_request_hash", "tenant", "request_hash"),
        Index("ix_review_tasks_deadline", "status", "deadline_ms"),
    )

    task_id: str = Field(sa_column=Column(String(32), primary_key=True))
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    turn_id: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    session: str | None = Field(default=None, sa_column=Column(String(128)))
    stage: str = Field(sa_column=Column(String(16), nullable=False))  # request | response
    requester: str = Field(sa_column=Column(String(256), nullable=False))  # the turn's actor
    requester_key: str | None = Field(default=None, sa_column=Column(String(32)))
    reviewer_group: str = Field(sa_column=Column(String(128), nullable=False))
    approvals_required: int = Field(sa_column=Column(Integer, nullable=False))
    deadline_s: int = Field(sa_column=Column(BigInteger, nullable=False))
    deadline_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    on_deadline: str = Field(sa_column=Column(String(16), nullable=False))  # reject | escalate
    escalate_to: str | None = Field(default=None, sa_column=Column(String(128)))
    reviewer_identity: str = Field(sa_column=Column(String(16), nullable=False))
    round: int = Field(sa_column=Column(Integer, nullable=False))
    # pending | escalated (both open) | approved | rejected | changes_requested | expired
    status: str = Field(sa_column=Column(String(24), nullable=False))
    claimed_by: str | None = Field(default=None, sa_column=Column(String(256)))
    claimed_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    shown: str = Field(sa_column=Column(Text, nullable=False))  # JSON
    shown_digest: str = Field(sa_column=Column(String(64), nullable=False))
    reasons: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of the policy's
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    decided_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    reason: str | None = Field(default=None, sa_column=Column(Text))  # why it closed as it did
    outcome_index: int | None = Field(default=None, sa_column=Column(BigInteger))


class ReviewDecision(SQLModel, table=True):
    """One reviewer's decision on one task; a reviewer decides a task once."""

    __tablename__ = "review_decisions"
    __table_args__ = (
        UniqueConstraint("task_id", "reviewer", name="uq_review_decisions_reviewer"),
        Index("ix_review_decisions_q_reviewer", "reviewer", "task_id"),  # 0010_query_indexes
    )

    decision_id: str = Field(sa_column=Column(String(32), primary_key=True))
    task_id: str = Field(
        sa_column=Column(String(32), ForeignKey("review_tasks.task_id"), nullable=False, index=True)
    )
    reviewer: str = Field(sa_column=Column(String(256), nullable=False))
    reviewer_key: str | None = Field(default=None, sa_column=Column(String(32)))
    reviewer_group: str = Field(sa_column=Column(String(128), nullable=False))
    round: int = Field(sa_column=Column(Integer, nullable=False))
    decision: str = Field(sa_column=Column(String(24), nullable=False))  # approve | reject | ...
    comment: str = Field(sa_column=Column(Text, nullable=False))
    shown_digest: str = Field(sa_column=Column(String(64), nullable=False))
    # How a release's manifest names this reviewer (the policy's reviewer_identity).
    credit: str = Field(sa_column=Column(String(256), nullable=False))
    time_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    ledger_index: int | None = Field(default=None, sa_column=Column(BigInteger))


class ReviewGroupMember(SQLModel, table=True):
    """An actor (an API key's or a console account's) who reviews for a group of a tenant."""

    __tablename__ = "review_group_members"

    tenant: str = Field(sa_column=Column(String(128), primary_key=True))
    group_name: str = Field(sa_column=Column(String(128), primary_key=True))
    actor: str = Field(sa_column=Column(String(256), primary_key=True))
    added_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    added_by: str = Field(sa_column=Column(String(256), nullable=False))


class ReviewWebhook(SQLModel, table=True):
    """A tenant's endpoint for review events, and the secret its deliveries are signed with."""

    __tablename__ = "review_webhooks"

    webhook_id: str = Field(sa_column=Column(String(32), primary_key=True))
    tenant: str = Field(sa_column=Column(String(128), nullable=False, index=True))
    url: str = Field(sa_column=Column(Text, nullable=False))
    secret: str = Field(sa_column=Column(String(128), nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_by: str = Field(sa_column=Column(String(256), nullable=False))
    removed_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


class WebhookDelivery(SQLModel, table=True):
    """One event for one webhook: pending until delivered, or failed after the last attempt."""

    __tablename__ = "review_webhook_deliveries"
    __table_args__ = (Index("ix_review_webhook_deliveries_due", "status", "next_attempt_ms"),)

    delivery_id: str = Field(sa_column=Column(String(32), primary_key=True))
    webhook_id: str = Field(
        sa_column=Column(String(32), ForeignKey("review_webhooks.webhook_id"), nullable=False)
    )
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    event_type: str = Field(sa_column=Column(String(64), nullable=False))
    task_id: str | None = Field(default=None, sa_column=Column(String(32)))
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the JSON body, as sent
    status: str = Field(sa_column=Column(String(16), nullable=False))  # pending|delivered|failed
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    next_attempt_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    locked_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_status: int | None = Field(default=None, sa_column=Column(Integer))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    done_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


REVIEW_TASKS: Table = ReviewTask.__table__  # type: ignore[attr-defined]
REVIEW_DECISIONS: Table = ReviewDecision.__table__  # type: ignore[attr-defined]
REVIEW_GROUP_MEMBERS: Table = ReviewGroupMember.__table__  # type: ignore[attr-defined]
REVIEW_WEBHOOKS: Table = ReviewWebhook.__table__  # type: ignore[attr-defined]
WEBHOOK_DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
