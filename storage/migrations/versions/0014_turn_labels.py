"""Turn labels for the compliance queries' ``label`` filter, backfilled from version labels.

``storage/schema/turns.py`` (``TurnLabel``) holds the matching table. A turn's
``x-custody-labels`` pairs are written with the turn's closing append from this revision on; a
version label (``version.labelled``) is written with its own append, as ``@version`` on the
turn that made the version. ``ix_turn_labels_q`` ends in the turn paging key, so a page of one
label's turns is read from it alone, newest first.

Backfill: the version labels already recorded (``version_labels`` with ``session_versions`` and
``turns``, all rows the ledger states) are copied in. The header labels of turns recorded before
this revision cannot be: no index row or ledger leaf held them (only each policy decision's
committed input, a blob that may have been erased), so those turns have no request labels in
``turn_labels`` (docs/api.md says so).

Revision ID: 0014_turn_labels
Revises: 0013_sign_in_misses
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_turn_labels"
down_revision = "0013_sign_in_misses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "turn_labels",
        sa.Column("turn_id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_turn_labels_q", "turn_labels", ["tenant", "name", "value", "created_ms", "turn_id"]
    )
    op.execute(
        "INSERT INTO turn_labels (turn_id, name, value, tenant, created_ms)"
        " SELECT DISTINCT t.turn_id, '@version', l.label, t.tenant, t.created_ms"
        " FROM version_labels l"
        " JOIN session_versions v ON v.version_id = l.version_id"
        " JOIN turns t ON t.turn_id = v.turn_id"
    )


def downgrade() -> None:
    op.drop_index("ix_turn_labels_q", "turn_labels")
    op.drop_table("turn_labels")
