"""The SQLite ledger store: ``BEGIN IMMEDIATE`` orders appends, hashes computed in Python.

Order: the append transaction takes SQLite's write lock (``BEGIN IMMEDIATE``) before it reads
the head counter, so processes sharing the file get one gap-free order. (An advisory ``flock``
queue in front of it, to spare waiters SQLite's sleeping busy handler, was measured and made
four writer processes slower, not faster: see docs/performance.md.)

Hashes: the store keeps the tree's right edge (``merkle.Frontier``) of the size it last wrote
and computes the new stored hashes *before* taking the locks. Under the lock it only compares
the head with that size; when another process appended meanwhile, it reads the new frontier
(at most log2(n) hashes, one query) and recomputes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, text

from storage.db import make_engine
from storage.ledger.checkpoint import Checkpoint
from storage.ledger.events import SideRows
from storage.ledger.merkle import Frontier, stored_hash_count
from storage.ledger.store import (
    LOCATE_SQL,
    CursorHashReader,
    LeafRow,
    find_rows,
    insert_side_rows,
)


class SqliteStore:
    """A ledger in one SQLite file, shared by any number of processes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._read_engine = make_engine(
            engine.url.render_as_string(hide_password=False), immediate=False
        )
        self._writer: Any = None  # the leader's pooled DB-API connection
        self._cursor: Any = None  # a cursor of its sqlite3 connection, kept between appends
        self._frontier: Frontier | None = None  # the right edge after this store's last write

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def read_engine(self) -> Engine:
        return self._read_engine

    def append(self, rows: Sequence[LeafRow], side: Sequence[SideRows]) -> int:
        # Everything that does not need the lock is done before it, for the size this store
        # wrote last; under the lock it is redone only if another process appended meanwhile.
        hashes = [r.leaf_hash for r in rows]
        frontier = self._frontier
        if frontier is not None:
            guess = frontier.size
            frontier = frontier.copy()
            stored = frontier.extend(hashes)
            entry_rows = _entry_rows(guess, rows)
        cur = self._cursor
        if cur is None:
            self._writer = self._engine.raw_connection()
            cur = self._cursor = self._writer.driver_connection.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")  # the write lock, before the head is read
            cur.execute("SELECT size FROM ledger_head WHERE id = 1")
            size = int(cur.fetchone()[0])
            if frontier is None or size != guess:
                frontier = Frontier.read(size, CursorHashReader(cur))
                stored = frontier.extend(hashes)
                entry_rows = _entry_rows(size, rows)
            first_hash = stored_hash_count(size)
            cur.executemany(
                "INSERT INTO ledger_entries"
                " (idx, time_ms, type, tenant, turn_id, leaf, leaf_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                entry_rows,
            )
            cur.executemany(
                "INSERT INTO ledger_hashes (idx, hash) VALUES (?, ?)",
                [(first_hash + i, h) for i, h in enumerate(stored)],
            )
            cur.execute("UPDATE ledger_head SET size = ? WHERE id = 1", (size + len(rows),))
            insert_side_rows(cur, side, "?")
            cur.execute("COMMIT")
        except BaseException:
            self._frontier = None
            self._drop_writer(failed=True)
            raise
        self._frontier = frontier
        return size

    def locate(self, rows: Sequence[LeafRow], after: int) -> int | None:
        raw = self._engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")  # waits out any writer still in a transaction
                cur.execute(LOCATE_SQL.format(mark="?"), (after,))
                return find_rows(cur.fetchall(), rows)
            finally:
                cur.close()
                raw.rollback()
        finally:
            raw.close()

    def add_checkpoint(self, checkpoint: Checkpoint, time_ms: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO ledger_checkpoints (size, time_ms, root, note)"
                    " VALUES (:s, :t, :r, :n)"
                ),
                {"s": checkpoint.size, "t": time_ms, "r": checkpoint.root, "n": checkpoint.note},
            )

    def close(self) -> None:
        self._drop_writer(failed=False)
        self._read_engine.dispose()

    def _drop_writer(self, *, failed: bool) -> None:
        raw, self._writer = self._writer, None
        cur, self._cursor = self._cursor, None
        if raw is None:
            return
        try:
            if cur is not None:
                cur.close()
            if failed:
                raw.rollback()
            raw.close()
        except Exception:  # a broken connection: let the pool forget it
            raw.invalidate()


def _entry_rows(size: int, rows: Sequence[LeafRow]) -> list[tuple[Any, ...]]:
    return [
        (size + i, r.time_ms, r.type, r.tenant, r.turn_id, r.leaf, r.leaf_hash)
        for i, r in enumerate(rows)
    ]
