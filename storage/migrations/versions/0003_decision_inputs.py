"""The full input of every policy decision, kept for ``custody policy diff --replay``.

The ledger event of a decision carries only a salted commitment to this input (it may hold the
prompt); this table is an erasable index beside it.

Revision ID: 0003_decision_inputs
Revises: 0002_ledger
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_decision_inputs"
down_revision = "0002_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decision_inputs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("turn_id", sa.String(40), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),  # request | response
        sa.Column("input_json", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_decision_inputs_turn", "decision_inputs", ["turn_id"])
    op.create_index("ix_decision_inputs_created", "decision_inputs", ["created_ms"])


def downgrade() -> None:
    op.drop_table("decision_inputs")
