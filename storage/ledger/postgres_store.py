"""The PostgreSQL ledger store: one ``custody_ledger_append`` call per batch, in one round trip.

Order: ``custody_ledger_append`` (migration 0002, ``SECURITY DEFINER``) locks the one-row
counter ``ledger_head`` with ``SELECT ... FOR UPDATE``, computes the leaf and interior hashes in
the tlog layout and inserts everything, so the application role needs no INSERT right and
cannot store a wrong hash. The row lock is held until commit, so processes get one gap-free
order; each holds it for the server's work and the commit's WAL flush only, never across a
client round trip:

- an append without side rows is that one statement on an autocommit connection: its own
  transaction, one round trip (no BEGIN, no COMMIT message). It is sent as a libpq prepared
  statement whose five parameters are array literals built here (``_array_params``): psycopg's
  list adaptation cost ~35-55 us of client CPU per call, with the GIL held, against ~3 us;
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
from psycopg import pq
from sqlalchemy import Engine, create_engine, text

from storage.ledger.checkpoint import Checkpoint
from storage.ledger.events import SideRows
from storage.ledger.store import LOCATE_SQL, LeafRow, find_rows, insert_side_rows

_APPEND = (
    "SELECT custody_ledger_append(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bytea[])"
)
_APPEND_NAME = b"custody_ledger_append"
_APPEND_PREPARED = (
    b"SELECT custody_ledger_append($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[])"
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
        self._encoding = "utf-8"  # the writer's client encoding, for the text arrays

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def read_engine(self) -> Engine:
        return self._read_engine

    def append(self, rows: Sequence[LeafRow], side: Sequence[SideRows]) -> int:
        try:
            conn = self._connected()
            if not any(s.rows for s in side):
                return self._append_alone(conn.pgconn, rows)
            params = (
                [r.time_ms for r in rows],
                [r.type for r in rows],
                [r.tenant for r in rows],
                [r.turn_id for r in rows],
                [r.leaf for r in rows],
            )
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

    def _connected(self) -> psycopg.Connection[Any]:
        """The writer connection, with the append statement prepared on it."""
        if self._writer is not None:
            return self._writer
        conn = self._writer = psycopg.connect(self._conninfo, autocommit=True)
        self._encoding = conn.info.encoding
        self._check(conn.pgconn.prepare(_APPEND_NAME, _APPEND_PREPARED), pq.ExecStatus.COMMAND_OK)
        return conn

    def _append_alone(self, pgconn: Any, rows: Sequence[LeafRow]) -> int:
        """The append as one prepared statement, its own transaction (libpq releases the GIL
        while it waits for the answer)."""
        result = pgconn.exec_prepared(_APPEND_NAME, _array_params(rows, self._encoding))
        try:
            self._check(result, pq.ExecStatus.TUPLES_OK)
            value = result.get_value(0, 0) if result.ntuples == 1 else None
        finally:
            result.clear()
        if value is None:
            raise RuntimeError("bad math: custody_ledger_append returned no row")
        return int(value)

    def _check(self, result: Any, status: pq.ExecStatus) -> None:
        if result.status != status:
            raise psycopg.errors.error_from_result(result, encoding=self._encoding)

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


def _array_params(rows: Sequence[LeafRow], encoding: str) -> list[bytes]:
    """The five arrays of ``custody_ledger_append`` as PostgreSQL array literals (text format):
    every text element double-quoted with its backslashes and double quotes escaped, NULL bare;
    bytea elements in hex (``\\x…``, its backslash escaped inside the quotes)."""
    return [
        ("{" + ",".join([str(int(r.time_ms)) for r in rows]) + "}").encode("ascii"),
        _text_array([r.type for r in rows], encoding),
        _text_array([r.tenant for r in rows], encoding),
        _text_array([r.turn_id for r in rows], encoding),
        b"{" + b",".join([b'"\\\\x' + r.leaf.hex().encode("ascii") + b'"' for r in rows]) + b"}",
    ]


def _text_array(values: Sequence[str | None], encoding: str) -> bytes:
    return (
        "{"
        + ",".join(
            [
                "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                for v in values
            ]
        )
        + "}"
    ).encode(encoding)
