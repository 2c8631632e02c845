"""Console accounts (people with a password) and their sessions.

``storage/schema/accounts.py`` holds the matching SQLModel models. A username is unique within
its tenant. Sessions are keyed by the SHA-256 of the cookie value, never the value itself.

Revision ID: 0007_console_accounts
Revises: 0005_key_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_console_accounts"
down_revision = "0006_reviews"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_accounts",
        sa.Column("account_id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("roles", sa.String(256), nullable=False),
        sa.Column("groups", sa.String(1024), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("password_changed_ms", sa.BigInteger, nullable=True),
        sa.Column("disabled_ms", sa.BigInteger, nullable=True),
        sa.Column("disabled_by", sa.String(256), nullable=True),
        sa.Column("failed_sign_ins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("throttled_until_ms", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("tenant", "username", name="uq_console_accounts_name"),
    )
    op.create_table(
        "console_sessions",
        sa.Column("session_sha256", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_console_sessions_account_id", "console_sessions", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_account_id", table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("console_accounts")
