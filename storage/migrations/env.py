"""Alembic environment: runs Custody's migrations online against the configured URL, and diffs
the database against ``storage.schema.metadata`` for ``custody db revision --autogenerate``.

What autogenerate compares is tables, columns (types, nullability, server defaults), indexes,
unique and foreign-key constraints; it does not see triggers, functions, roles or rows. So the
objects that only the migrations hold — the append-only triggers, the PostgreSQL append
functions, the ``custody_ledger_owner`` role and the ``ledger_head`` row — need no filter here:
they are invisible to the comparison, and a new one is written by hand in its migration.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool
from sqlmodel.sql.sqltypes import AutoString

from storage.schema import metadata

config = context.config
url: str = config.get_main_option("sqlalchemy.url") or ""
assert url, "sqlalchemy.url must be set by storage.db.alembic_config"


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write SQLModel's ``AutoString`` (a model field with no ``sa_column``) as ``sa.String``,
    so a generated migration needs only SQLAlchemy, like the hand-written ones."""
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String({obj.length})" if obj.length else "sa.String()"
    return False


def _transactional_sqlite(engine: Engine) -> None:
    """Run SQLite's DDL inside one transaction, as PostgreSQL's is.

    Python's sqlite3 begins a transaction only before DML, so every ``CREATE``/``DROP`` of a
    migration committed (and fsynced) on its own: a fresh database took ~180 commits and about a
    second of waiting on the disk, and a crash could leave half a migration behind. Here the
    driver's own transaction handling steps aside and ``BEGIN IMMEDIATE`` opens the one
    transaction of the upgrade: it commits once, atomically, and a second process migrating the
    same file waits for the write lock, then finds the schema at head (Alembic reads the version
    inside the transaction)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        _transactional_sqlite(engine)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Two replicas starting at once must not both run the same migration.
            connection.execute(text("SELECT pg_advisory_lock(727274)"))
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=metadata,
            compare_server_default=True,
            # SQLite alters a column only by copying its table: generated migrations use batch
            # operations, which are plain ALTERs on PostgreSQL.
            render_as_batch=True,
            render_item=render_item,
            transactional_ddl=True,  # SQLite's too (``_transactional_sqlite``)
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(727274)"))
            connection.commit()
    engine.dispose()


run_migrations_online()
