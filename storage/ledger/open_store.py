"""Open the ledger store driver for a database: SQLite or PostgreSQL.

Its own module so that the interface and the shared reads (``store.py``) import neither driver,
and neither driver imports this: the three modules form no circle. The PostgreSQL driver (and
psycopg, ~60 ms of start-up) is imported only for a PostgreSQL database.
"""

from __future__ import annotations

from sqlalchemy import Engine

from storage.ledger.sqlite_store import SqliteStore
from storage.ledger.store import LedgerStore


def open_store(engine: Engine) -> LedgerStore:
    """The driver for ``engine``'s database (migrated)."""
    if engine.dialect.name == "postgresql":
        from storage.ledger.postgres_store import PostgresStore

        return PostgresStore(engine)
    if engine.dialect.name == "sqlite":
        return SqliteStore(engine)
    raise ValueError(
        f"the ledger runs on SQLite or PostgreSQL, not {engine.dialect.name}: set"
        " CUSTODY_DATABASE_URL to a sqlite:/// or postgresql:// URL"
    )
