"""The ledger: entries, stored Merkle hashes, the head counter, checkpoints; the blob store.

UPDATE, DELETE and TRUNCATE of the ledger tables are refused by the database itself (triggers on
SQLite and PostgreSQL). The head counter may only grow. Triggers stop the application, not the
table owner: published checkpoints are what make a rewrite of history detectable.

On PostgreSQL appends go through ``SECURITY DEFINER`` functions (``custody_ledger_lock_head``,
``custody_ledger_append``, ``custody_ledger_add_checkpoint``), and a ``NOLOGIN`` role
``custody_ledger_owner`` is created when the migrating user may create roles. An operator who
makes that role own the ledger tables and functions can then revoke INSERT from the application
role: see docs/ledger-format.md, "Locking the application out".

Revision ID: 0002_ledger
Revises: 0001_core
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_ledger"
down_revision = "0001_core"
branch_labels = None
depends_on = None

APPEND_ONLY = ("ledger_entries", "ledger_hashes", "ledger_checkpoints")


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("turn_id", sa.String(64), nullable=True),
        sa.Column("leaf", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_ledger_entries_turn", "ledger_entries", ["turn_id"])
    op.create_table(
        "ledger_hashes",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO ledger_head (id, size) VALUES (1, 0)")
    op.create_table(
        "ledger_checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "blob_commitments",
        sa.Column("commitment", sa.String(80), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("salt", sa.LargeBinary, nullable=False),  # emptied when the blob is erased
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_blob_commitments_digest", "blob_commitments", ["digest"])
    op.create_table(
        "blob_erasures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False, index=True),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgres_triggers()
    else:
        _sqlite_triggers()


def _sqlite_triggers() -> None:
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {action} refused'); END"
            )
    op.execute(
        "CREATE TRIGGER ledger_head_forward_only BEFORE UPDATE ON ledger_head "
        "WHEN NEW.size < OLD.size OR NEW.id != OLD.id "
        "BEGIN SELECT RAISE(ABORT, 'ledger_head only grows'); END"
    )
    op.execute(
        "CREATE TRIGGER ledger_head_no_delete BEFORE DELETE ON ledger_head "
        "BEGIN SELECT RAISE(ABORT, 'ledger_head cannot be deleted'); END"
    )
    op.execute(
        "CREATE TRIGGER blobs_erase_recorded BEFORE DELETE ON blobs "
        "WHEN NOT EXISTS (SELECT 1 FROM blob_erasures WHERE digest = OLD.digest) "
        "BEGIN SELECT RAISE(ABORT, 'blobs are deleted only by a recorded erasure'); END"
    )


def _postgres_triggers() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
        END $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_head_forward_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'UPDATE' OR NEW.size < OLD.size OR NEW.id <> OLD.id THEN
                RAISE EXCEPTION 'ledger_head only grows: % refused', TG_OP;
            END IF;
            RETURN NEW;
        END $$
        """
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION custody_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION custody_append_only()"
        )
    op.execute(
        "CREATE TRIGGER ledger_head_forward_only BEFORE UPDATE OR DELETE ON ledger_head "
        "FOR EACH ROW EXECUTE FUNCTION custody_head_forward_only()"
    )
    op.execute(
        "CREATE TRIGGER ledger_head_no_truncate BEFORE TRUNCATE ON ledger_head "
        "FOR EACH STATEMENT EXECUTE FUNCTION custody_append_only()"
    )
    _postgres_append_functions()
    _postgres_blob_guard()


def _postgres_blob_guard() -> None:
    # A blob is deleted only after its erasure (who, when, why) was recorded.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_blob_erase_recorded() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM blob_erasures WHERE digest = OLD.digest) THEN
                RAISE EXCEPTION 'blobs are deleted only by a recorded erasure (%)', OLD.digest;
            END IF;
            RETURN OLD;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER blobs_erase_recorded BEFORE DELETE ON blobs "
        "FOR EACH ROW EXECUTE FUNCTION custody_blob_erase_recorded()"
    )
    op.execute(
        "CREATE TRIGGER blobs_no_truncate BEFORE TRUNCATE ON blobs "
        "FOR EACH STATEMENT EXECUTE FUNCTION custody_append_only()"
    )


def _postgres_append_functions() -> None:
    # The append path as functions running with their owner's rights, so the application role
    # can be left with SELECT and EXECUTE only (the operator's choice; see the module docstring).
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_ledger_lock_head() RETURNS bigint
        LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
            SELECT size FROM ledger_head WHERE id = 1 FOR UPDATE
        $$
        """
    )
    # The tlog stored-hash layout (storage/ledger/merkle.py) in SQL, so an append computes its
    # interior hashes under the lock, in one round trip, and the application cannot store a
    # wrong one.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_stored_hash_index(p_level int, p_n bigint)
        RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT AS $$
        DECLARE
            n bigint := p_n;
            i bigint := 0;
        BEGIN
            FOR step IN 1..p_level LOOP
                n := 2 * n + 1;
            END LOOP;
            WHILE n > 0 LOOP
                i := i + n;
                n := n >> 1;
            END LOOP;
            RETURN i + p_level;
        END $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_stored_hash_count(p_n bigint)
        RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT AS $$
        DECLARE
            c bigint;
            i bigint := p_n - 1;
        BEGIN
            IF p_n = 0 THEN
                RETURN 0;
            END IF;
            c := custody_stored_hash_index(0, p_n - 1) + 1;
            WHILE i & 1 = 1 LOOP
                c := c + 1;
                i := i >> 1;
            END LOOP;
            RETURN c;
        END $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_ledger_append(
            p_times bigint[], p_types text[], p_tenants text[], p_turns text[], p_leaves bytea[]
        ) RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        DECLARE
            head_size bigint;
            first_new bigint;
            n bigint;
            x bigint;
            j bigint;
            lvl int;
            h bytea;
            lft bytea;
            hs bytea[] := '{}';
        BEGIN
            -- The one-row counter, locked until commit: one total order, no gap, no fork.
            SELECT size INTO STRICT head_size FROM ledger_head WHERE id = 1 FOR UPDATE;
            first_new := custody_stored_hash_count(head_size);
            FOR k IN 1..cardinality(p_leaves) LOOP
                n := head_size + k - 1;
                h := sha256(decode('00', 'hex') || p_leaves[k]);
                hs := hs || h;
                lvl := 0;
                x := n;
                WHILE x & 1 = 1 LOOP
                    j := custody_stored_hash_index(lvl, (n >> lvl) - 1);
                    IF j >= first_new THEN
                        lft := hs[j - first_new + 1];
                    ELSE
                        SELECT hash INTO STRICT lft FROM ledger_hashes WHERE idx = j;
                    END IF;
                    h := sha256(decode('01', 'hex') || lft || h);
                    hs := hs || h;
                    lvl := lvl + 1;
                    x := x >> 1;
                END LOOP;
            END LOOP;
            INSERT INTO ledger_entries (idx, time_ms, type, tenant, turn_id, leaf, leaf_hash)
            SELECT head_size + i - 1, p_times[i], p_types[i], p_tenants[i], p_turns[i],
                   p_leaves[i], sha256(decode('00', 'hex') || p_leaves[i])
            FROM generate_subscripts(p_leaves, 1) AS i;
            INSERT INTO ledger_hashes (idx, hash)
            SELECT first_new + i - 1, hs[i] FROM generate_subscripts(hs, 1) AS i;
            UPDATE ledger_head SET size = head_size + cardinality(p_leaves) WHERE id = 1;
            RETURN head_size;
        END $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION custody_ledger_add_checkpoint(
            p_size bigint, p_time_ms bigint, p_root bytea, p_note text
        ) RETURNS void
        LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
            INSERT INTO ledger_checkpoints (size, time_ms, root, note)
            VALUES (p_size, p_time_ms, p_root, p_note)
        $$
        """
    )
    # Roles are cluster-wide: create the owner role once, and only where we may.
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custody_ledger_owner') THEN
                CREATE ROLE custody_ledger_owner NOLOGIN;
            END IF;
        EXCEPTION
            WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
                RAISE NOTICE 'custody_ledger_owner not created: %', SQLERRM;
        END $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for fn in (
            "custody_ledger_lock_head()",
            "custody_ledger_append(bigint[], text[], text[], text[], bytea[])",
            "custody_ledger_add_checkpoint(bigint, bigint, bytea, text)",
        ):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}")
    for table in (
        "blob_erasures",
        "blob_commitments",
        "blobs",
        "ledger_checkpoints",
        "ledger_head",
        "ledger_hashes",
        "ledger_entries",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        for fn in ("custody_stored_hash_count(bigint)", "custody_stored_hash_index(int, bigint)"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}")
        for fn in (
            "custody_blob_erase_recorded",
            "custody_head_forward_only",
            "custody_append_only",
        ):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}()")
