"""Decision inputs become commitments: ``decision_inputs.input_json`` (clear text) is dropped.

A decision's input holds the prompt, so it lives only in the blob store, like every other content
of a turn, where erasure reaches it; the row keeps the salted commitment the ``policy.decided``
event already holds (``input_commitment``), and replay opens the blob through it. Existing rows
are mapped to the commitment of the blob with the same bytes (every input was also stored as a
blob); a row with no such blob is deleted rather than kept in clear.

Revision ID: 0004_decision_input_commitments
Revises: 0003_decision_inputs (at merge: the keys migration, 0003_keys)
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004_decision_input_commitments"
# At merge this follows the keys migration (H4's 0003); on this branch it follows the last one.
down_revision = "0003_decision_inputs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decision_inputs") as batch:
        batch.add_column(sa.Column("input_commitment", sa.String(80), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, input_json FROM decision_inputs")).all()
    for row_id, raw in rows:
        digest = hashlib.sha256(str(raw).encode()).hexdigest()
        found = conn.execute(
            sa.text("SELECT commitment FROM blob_commitments WHERE digest = :d LIMIT 1"),
            {"d": digest},
        ).first()
        if found is None:
            conn.execute(sa.text("DELETE FROM decision_inputs WHERE id = :i"), {"i": row_id})
        else:
            conn.execute(
                sa.text("UPDATE decision_inputs SET input_commitment = :c WHERE id = :i"),
                {"c": found[0], "i": row_id},
            )
    with op.batch_alter_table("decision_inputs") as batch:
        batch.drop_column("input_json")
        batch.alter_column("input_commitment", existing_type=sa.String(80), nullable=False)


def downgrade() -> None:
    # The clear text is gone by design; a downgrade leaves the inputs to be opened from blobs.
    with op.batch_alter_table("decision_inputs") as batch:
        batch.add_column(sa.Column("input_json", sa.Text, nullable=False, server_default="{}"))
        batch.drop_column("input_commitment")
