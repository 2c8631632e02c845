"""Review tasks, decisions, reviewer groups, review webhooks and their deliveries.

Matches ``storage/schema/reviews.py`` column for column (see that module for what each table
holds). Plain tables with no triggers: the ledger is the tamper-evident record of every review
step; these rows are the working state the gateways share.

Revision ID: 0006_reviews
Revises: 0005_key_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_reviews"
down_revision = "0005_key_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_tasks",
        sa.Column("task_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("turn_id", sa.String(64), nullable=False),
        sa.Column("session", sa.String(128), nullable=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("requester", sa.String(256), nullable=False),
        sa.Column("requester_key", sa.String(32), nullable=True),
        sa.Column("reviewer_group", sa.String(128), nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("deadline_s", sa.BigInteger, nullable=False),
        sa.Column("deadline_ms", sa.BigInteger, nullable=False),
        sa.Column("on_deadline", sa.String(16), nullable=False),
        sa.Column("escalate_to", sa.String(128), nullable=True),
        sa.Column("reviewer_identity", sa.String(16), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("claimed_by", sa.String(256), nullable=True),
        sa.Column("claimed_until_ms", sa.BigInteger, nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("shown", sa.Text, nullable=False),
        sa.Column("shown_digest", sa.String(64), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("decided_ms", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("outcome_index", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_review_tasks_turn_id", "review_tasks", ["turn_id"])
    op.create_index("ix_review_tasks_tenant_status", "review_tasks", ["tenant", "status"])
    op.create_index("ix_review_tasks_request_hash", "review_tasks", ["tenant", "request_hash"])
    op.create_index("ix_review_tasks_deadline", "review_tasks", ["status", "deadline_ms"])

    op.create_table(
        "review_decisions",
        sa.Column("decision_id", sa.String(32), primary_key=True),
        sa.Column("task_id", sa.String(32), sa.ForeignKey("review_tasks.task_id"), nullable=False),
        sa.Column("reviewer", sa.String(256), nullable=False),
        sa.Column("reviewer_key", sa.String(32), nullable=True),
        sa.Column("reviewer_group", sa.String(128), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("decision", sa.String(24), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("shown_digest", sa.String(64), nullable=False),
        sa.Column("credit", sa.String(256), nullable=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("ledger_index", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("task_id", "reviewer", name="uq_review_decisions_reviewer"),
    )
    op.create_index("ix_review_decisions_task_id", "review_decisions", ["task_id"])

    op.create_table(
        "review_group_members",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("group_name", sa.String(128), primary_key=True),
        sa.Column("actor", sa.String(256), primary_key=True),
        sa.Column("added_ms", sa.BigInteger, nullable=False),
        sa.Column("added_by", sa.String(256), nullable=False),
    )

    op.create_table(
        "review_webhooks",
        sa.Column("webhook_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("removed_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_review_webhooks_tenant", "review_webhooks", ["tenant"])

    op.create_table(
        "review_webhook_deliveries",
        sa.Column("delivery_id", sa.String(32), primary_key=True),
        sa.Column(
            "webhook_id",
            sa.String(32),
            sa.ForeignKey("review_webhooks.webhook_id"),
            nullable=False,
        ),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(32), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("locked_until_ms", sa.BigInteger, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("done_ms", sa.BigInteger, nullable=True),
    )
    op.create_index(
        "ix_review_webhook_deliveries_due",
        "review_webhook_deliveries",
        ["status", "next_attempt_ms"],
    )


def downgrade() -> None:
    op.drop_table("review_webhook_deliveries")
    op.drop_table("review_webhooks")
    op.drop_table("review_group_members")
    op.drop_table("review_decisions")
    op.drop_table("review_tasks")
