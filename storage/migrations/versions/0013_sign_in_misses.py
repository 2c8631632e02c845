"""Failed console sign-ins under names that match no account, throttled like an account's.

``storage/schema/accounts.py`` (``SignInMiss``) holds the matching table.

Revision ID: 0013_sign_in_misses
Revises: 0012_global_limits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_sign_in_misses"
down_revision = "0012_global_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sign_in_misses",
        sa.Column("name_sha256", sa.String(64), primary_key=True),
        sa.Column("failed_sign_ins", sa.Integer, nullable=False),
        sa.Column("throttled_until_ms", sa.BigInteger),
        sa.Column("last_failed_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_console_sign_in_misses_last_failed_ms", "console_sign_in_misses", ["last_failed_ms"]
    )


def downgrade() -> None:
    op.drop_index("ix_console_sign_in_misses_last_failed_ms", "console_sign_in_misses")
    op.drop_table("console_sign_in_misses")
