"""Indexes for the compliance queries (``governance/compliance/queries.py``) at 10⁶ turns.

Every turn filter is an equality on the tenant and one column, a time range and newest-first
keyset paging on ``(created_ms, turn_id)``: one index per filter, ending in the paging key, lets
the planner answer a page by walking the index backwards and stop after ``limit`` rows (SQLite and
PostgreSQL alike; ``tests/test_compliance_indexes.py`` checks the plans). Events page on the
ledger index within a tenant (and type). Images are found by hash through the indexes
``0001_core`` made.

Revision ID: 0010_query_indexes
Revises: 0009_fingerprints
"""

from __future__ import annotations

from alembic import op

revision = "0010_query_indexes"
down_revision = "0009_fingerprints"
branch_labels = None
depends_on = None

TURN_INDEXES = {
    "ix_turns_q_tenant": ("tenant", "created_ms", "turn_id"),
    "ix_turns_q_actor": ("tenant", "actor", "created_ms", "turn_id"),
    "ix_turns_q_session": ("tenant", "session_id", "created_ms", "turn_id"),
    "ix_turns_q_model": ("tenant", "model", "created_ms", "turn_id"),
    "ix_turns_q_status": ("tenant", "status", "created_ms", "turn_id"),
    "ix_turns_q_outcome": ("tenant", "outcome", "created_ms", "turn_id"),
}
LEDGER_INDEXES = {
    "ix_ledger_entries_q_tenant": ("tenant", "idx"),
    "ix_ledger_entries_q_type": ("tenant", "type", "idx"),
}
REVIEW_INDEXES = {
    "ix_review_decisions_q_reviewer": ("reviewer", "task_id"),
}


def upgrade() -> None:
    for name, columns in TURN_INDEXES.items():
        op.create_index(name, "turns", list(columns))
    for name, columns in LEDGER_INDEXES.items():
        op.create_index(name, "ledger_entries", list(columns))
    for name, columns in REVIEW_INDEXES.items():
        op.create_index(name, "review_decisions", list(columns))


def downgrade() -> None:
    for name in REVIEW_INDEXES:
        op.drop_index(name, "review_decisions")
    for name in LEDGER_INDEXES:
        op.drop_index(name, "ledger_entries")
    for name in TURN_INDEXES:
        op.drop_index(name, "turns")
