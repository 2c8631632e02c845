"""Perceptual fingerprints (PDQ, ISCC Image-Code) of every image, with 16 indexed PDQ bands.

``storage/schema/fingerprints.py`` holds the matching table definition.

Revision ID: 0009_fingerprints
Revises: 0008_sessions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_fingerprints"
down_revision = "0008_sessions"
branch_labels = None
depends_on = None

BANDS = [f"b{n}" for n in range(16)]


def upgrade() -> None:
    op.create_table(
        "image_fingerprints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("turn_id", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content_index", sa.Integer, nullable=False),
        sa.Column("part_index", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("pdq", sa.String(64), nullable=False),
        sa.Column("pdq_quality", sa.Integer, nullable=False),
        sa.Column("iscc", sa.String(64), nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in BANDS),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_image_fingerprints_turn", "image_fingerprints", ["turn_id"])
    for name in BANDS:
        op.create_index(f"ix_image_fingerprints_{name}", "image_fingerprints", [name])


def downgrade() -> None:
    for name in BANDS:
        op.drop_index(f"ix_image_fingerprints_{name}", table_name="image_fingerprints")
    op.drop_index("ix_image_fingerprints_turn", table_name="image_fingerprints")
    op.drop_table("image_fingerprints")
