"""The PostgreSQL ledger store: one ``custody_ledger_append`` call per batch, in one round trip.

Order: ``custody_ledger_append`` (migration 0002, ``SECURITY DEFINER``) locks the one-row
counter ``ledger_head`` with ``SELECT ... FOR UPDATE``, computes the leaf and interior hashes in
the tlog layout and inserts everything, so the application role needs no INSERT right and
cannot store a wrong hash. The row lock is held until commit, so processes get one gap-free
order; each holds it for the server's work and the commit's WAL flush only, never across a
client round trip:

- an append without side rows is that one statement on an autocommit connection: its own
  transaction, one round trip (no BEGIN, no COMMIT message);
- with side rows, BEGIN, the append, the side inserts and COMMIT go out together in one
  pipeline (libpq pipeline mode) and come back together.

The writer is a dedicated psycopg connection (statements are prepared after their fifth use);
reads and proofs use an autocommit engine without pre-ping, so a proof is one round trip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, text

from storage.ledger.checkpoint import Checkpoint
from storage.ledger.events import SideRows
from storage.ledger.store import LOCATE_SQL, LeafRow, find_rows, insert_side_rows

_APPEND = (
    "SELECT custody_ledger_append(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bytea[])"
)


class PostgresStore:
    """A ledger in a PostgreSQL database, shared by any number of processes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        url = engine.url.render_as_string(hide_password=False)
        self._read_engine = create_engine(
            url, pool_size=10, max_overflow=10, isolation_level="AUTOCOMMIT", pool_recycle=300
        )
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._writer: psycopg.Connection[Any] | None = None

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def read_engine(self) -> Engine:
        return self._read_engine

    def append(self, rows: Sequence[LeafRow], side: Sequence[SideRows]) -> int:
        params = (
            [r.time_ms for r in rows],
            [r.type for r in rows],
            [r.tenant for r in rows],
            [r.turn_id for r in rows],
            [r.leaf for r in rows],
        )
        if self._writer is None:
            self._writer = psycopg.connect(self._conninfo, autocommit=True)
        conn = self._writer
        try:
            if not any(s.rows for s in side):
                row = conn.execute(_APPEND, params).fetchone()
            else:
                with conn.cursor() as append, conn.cursor() as cur:
                    with conn.pipeline():  # one round trip, sent and answered together
                        cur.execute("BEGIN")
                        append.execute(_APPEND, params)
                        insert_side_rows(cur, side, "%s")
                        cur.execute("COMMIT")
                    row = append.fetchone()
        except BaseException:
            self._drop_writer()  # closing the connection rolls back whatever was open
            raise
        if row is None:
            raise RuntimeError("bad math: custody_ledger_append returned no row")
        return int(row[0])

    def locate(self, rows: Sequence[LeafRow], after: int) -> int | None:
        with psycopg.connect(self._conninfo) as conn:  # one transaction, rolled back at the end
            conn.execute("SELECT custody_ledger_lock_head()")  # waits out an open append
            found = find_rows(conn.execute(LOCATE_SQL.format(mark="%s"), (after,)), rows)
            conn.rollback()
            return found

    def add_checkpoint(self, checkpoint: Checkpoint, time_ms: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                text("SELECT custody_ledger_add_checkpoint(:s, :t, :r, :n)"),
                {"s": checkpoint.size, "t": time_ms, "r": checkpoint.root, "n": checkpoint.note},
            )

    def close(self) -> None:
        self._drop_writer()
        self._read_engine.dispose()

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                conn.close()
