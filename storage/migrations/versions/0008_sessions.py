"""Editing sessions: images, version graphs, session turns and their items, labels.

``storage/schema/sessions.py`` holds the matching SQLModel models.

Revision ID: 0008_sessions
Revises: 0007_console_accounts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_sessions"
down_revision = "0007_console_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edit_sessions",
        sa.Column("session_id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("client_key", sa.String(256), nullable=True),
        sa.Column("title", sa.String(256), nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_edit_sessions_key", "edit_sessions", ["tenant", "actor", "client_key"])
    op.create_table(
        "session_images",
        sa.Column("image_id", sa.String(40), primary_key=True),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("rights_holder", sa.String(256), nullable=True),
        sa.Column("licence", sa.String(256), nullable=True),
        sa.Column("identifiable_people", sa.Boolean, nullable=True),
        sa.Column("consent", sa.String(32), nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_session_images_session", "session_images", ["session_id"])
    op.create_table(
        "session_versions",
        sa.Column("version_id", sa.String(40), primary_key=True),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("image_id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("parent_version", sa.String(40), nullable=True),
        sa.Column("turn_id", sa.String(40), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("commitment", sa.String(80), nullable=False),
        sa.Column("mime_type", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_session_versions_session", "session_versions", ["session_id"])
    op.create_index("ix_session_versions_sha256", "session_versions", ["tenant", "actor", "sha256"])
    op.create_table(
        "session_turns",
        sa.Column("turn_id", sa.String(40), primary_key=True),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("intent_id", sa.String(40), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_session_turns_session", "session_turns", ["session_id", "created_ms"])
    op.create_table(
        "session_turn_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("turn_id", sa.String(40), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("version_id", sa.String(40), nullable=True),
        sa.Column("commitment", sa.String(80), nullable=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index("ix_session_turn_items_turn", "session_turn_items", ["turn_id"])
    op.create_table(
        "version_labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("version_id", sa.String(40), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_version_labels_session", "version_labels", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_version_labels_session", table_name="version_labels")
    op.drop_table("version_labels")
    op.drop_index("ix_session_turn_items_turn", table_name="session_turn_items")
    op.drop_table("session_turn_items")
    op.drop_index("ix_session_turns_session", table_name="session_turns")
    op.drop_table("session_turns")
    op.drop_index("ix_session_versions_sha256", table_name="session_versions")
    op.drop_index("ix_session_versions_session", table_name="session_versions")
    op.drop_table("session_versions")
    op.drop_index("ix_session_images_session", table_name="session_images")
    op.drop_table("session_images")
    op.drop_index("ix_edit_sessions_key", table_name="edit_sessions")
    op.drop_table("edit_sessions")
