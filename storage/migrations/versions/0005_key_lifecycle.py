"""API key lifecycle: expiry, revocation reasons, rotation links, last use, recorded expiry.

``revoked_ms`` may lie in the future: a key rotated with a grace period stays valid until then.
``expiry_recorded_ms`` marks the key whose ``key.expired`` ledger event was written, so the
event is written once per key however many gateway processes run the expiry job.

Revision ID: 0005_key_lifecycle
Revises: 0004_decision_input_commitments
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_key_lifecycle"
down_revision = "0004_decision_input_commitments"
branch_labels = None
depends_on = None

COLUMNS = (
    sa.Column("expires_ms", sa.BigInteger, nullable=True),
    sa.Column("revoked_by", sa.String(256), nullable=True),
    sa.Column("revoke_reason", sa.Text, nullable=True),
    sa.Column("rotated_to", sa.String(32), nullable=True),
    sa.Column("rotated_from", sa.String(32), nullable=True),
    sa.Column("last_used_ms", sa.BigInteger, nullable=True),
    sa.Column("expiry_recorded_ms", sa.BigInteger, nullable=True),
)


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("api_keys", column)
    op.create_index("ix_api_keys_expires", "api_keys", ["expires_ms"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_expires", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
