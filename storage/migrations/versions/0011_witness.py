"""Witness cosignatures and RFC 3161 timestamps of checkpoints: ``ledger_cosignatures``,
``ledger_checkpoint_timestamps``.

Matches ``storage/schema/witness.py`` column for column. No triggers: a cosignature is checked
against its witness's key whenever it is read, so a forged row fails verification anyway.

Revision ID: 0011_witness
Revises: 0010_query_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_witness"
down_revision = "0010_query_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_cosignatures",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("witness_key", sa.String(512), primary_key=True),
        sa.Column("witness", sa.String(256), nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_ledger_cosignatures_witness", "ledger_cosignatures", ["witness_key", "size"]
    )
    op.create_table(
        "ledger_checkpoint_timestamps",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("token", sa.LargeBinary, nullable=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_checkpoint_timestamps")
    op.drop_index("ix_ledger_cosignatures_witness", table_name="ledger_cosignatures")
    op.drop_table("ledger_cosignatures")
