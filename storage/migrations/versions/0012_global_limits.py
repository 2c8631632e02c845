"""Coordination of several replicas: global rate counters, leases, the active policy revision.

``storage/schema/coordination.py`` holds the matching tables.

Revision ID: 0012_global_limits
Revises: 0011_witness
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_global_limits"
down_revision = "0011_witness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_counters",
        sa.Column("bucket", sa.String(64), primary_key=True),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("turns", sa.BigInteger, nullable=False),
        sa.Column("images", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("acquired_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "policy_revisions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("recorded_ms", sa.BigInteger, nullable=False),
        sa.Column("recorded_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policy_revisions")
    op.drop_table("leases")
    op.drop_table("rate_counters")
