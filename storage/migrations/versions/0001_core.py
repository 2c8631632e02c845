"""Core tables: API keys, turns and the images of each turn.

Revision ID: 0001_core
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("roles", sa.String(256), nullable=False),
        sa.Column("label", sa.String(256), nullable=False, server_default=""),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked_ms", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "turns",
        sa.Column("turn_id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("api_version", sa.String(16), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=True),
        sa.Column("prompt_sha256", sa.String(64), nullable=True),
        sa.Column("request_sha256", sa.String(64), nullable=True),
        sa.Column("response_sha256", sa.String(64), nullable=True),
        sa.Column("upstream", sa.String(256), nullable=False),
        sa.Column("upstream_status", sa.Integer, nullable=True),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.Column("finish_reason", sa.String(64), nullable=True),
        sa.Column("block_reason", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("usage_json", sa.Text, nullable=True),
        sa.Column("timings_json", sa.Text, nullable=True),
        sa.Column("first_entry_index", sa.BigInteger, nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("finished_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_turns_tenant_created", "turns", ["tenant", "created_ms"])
    op.create_index("ix_turns_actor_created", "turns", ["tenant", "actor", "created_ms"])
    op.create_table(
        "turn_images",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("turn_id", sa.String(40), sa.ForeignKey("turns.turn_id"), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),  # input | output
        sa.Column("role", sa.String(16), nullable=False),  # parent | reference | mask | output
        sa.Column("content_index", sa.Integer, nullable=False),
        sa.Column("part_index", sa.Integer, nullable=False),
        sa.Column("mime_type", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("signed_sha256", sa.String(64), nullable=True),
        sa.Column("manifest_sha256", sa.String(64), nullable=True),
    )
    op.create_index("ix_turn_images_turn", "turn_images", ["turn_id"])
    op.create_index("ix_turn_images_sha256", "turn_images", ["sha256"])
    op.create_index("ix_turn_images_signed", "turn_images", ["signed_sha256"])


def downgrade() -> None:
    op.drop_table("turn_images")
    op.drop_table("turns")
    op.drop_table("api_keys")
