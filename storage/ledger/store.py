"""The seam between the log and its database: one ``LedgerStore`` driver per backend.

The log (``storage/ledger/log.py``) holds no SQL dialect: what differs between SQLite and
PostgreSQL — how the append takes the order lock, who computes the stored hashes, how a
checkpoint row is written, how reads connect — lives in ``sqlite_store.py`` and
``postgres_store.py``. What both speak the same way (reading entries, stored hashes and
checkpoints) lives here, once. ``open_store.py`` picks the driver for an engine, so that this
module imports neither driver and the three form no import circle.

The MUST-contracts of a store, which every driver keeps and ``tests/test_ledger_store.py``
checks on both databases:

- ``append`` writes the rows at the next indexes of one total, gap-free order shared by every
  process on the database (the one-row counter ``ledger_head``, bumped in the same
  transaction), with their stored tree hashes and the side rows, all or nothing, and returns
  only once the transaction is durable. It is called by one thread at a time per store (the
  group-commit leader).
- ``locate`` answers whether a batch whose sender lost its answer was committed: it waits for
  the order lock first, so a transaction still open cannot commit after it looked.
- ``add_checkpoint`` stores a signed checkpoint; a second one of the same size fails with
  ``sqlalchemy.exc.IntegrityError``.
- Reads never take the order lock: committed entries, hashes and checkpoints never change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Engine, text

from storage.ledger.checkpoint import Checkpoint
from storage.ledger.events import Entry, LedgerEvent, SideRows
from storage.ledger.leaf import decode_leaf
from storage.ledger.merkle import HashReader, ProofError


class LeafRow(NamedTuple):
    """One ``ledger_entries`` row to append (its index is the store's to assign).

    A named tuple: built once per event on the append path (a quarter of a frozen dataclass's
    cost), and sent to the host's sequencer as a plain tuple (``host_appends``)."""

    time_ms: int
    type: str
    tenant: str
    turn_id: str | None
    leaf: bytes
    leaf_hash: bytes


class LedgerStore(Protocol):
    """A ledger's database (see the module docstring for the contract)."""

    @property
    def engine(self) -> Engine: ...

    @property
    def read_engine(self) -> Engine: ...

    def append(self, rows: Sequence[LeafRow], side: Sequence[SideRows]) -> int:
        """Append ``rows`` and ``side`` in one durable transaction; the first row's index."""
        ...

    def locate(self, rows: Sequence[LeafRow], after: int) -> int | None:
        """Under the order lock (any transaction still open has ended): the index of ``rows``
        if they were appended, together and in order, at or after index ``after``; else None."""
        ...

    def add_checkpoint(self, checkpoint: Checkpoint, time_ms: int) -> None: ...

    def close(self) -> None: ...


# --- what both dialects read the same way --------------------------------------------------------


def select_hashes(indexes: Sequence[int]) -> str:
    """The query for the stored hashes at ``indexes`` (integers, inlined: one plan per shape)."""
    return (
        "SELECT idx, hash FROM ledger_hashes WHERE idx IN"
        f" ({','.join(str(int(i)) for i in sorted(set(indexes)))})"
    )


def in_order(rows: Iterable[Any], indexes: Sequence[int]) -> list[bytes]:
    """The hashes of ``rows`` (idx, hash) in the order of ``indexes``; every one must exist."""
    found = {int(i): bytes(h) for i, h in rows}
    missing = [i for i in indexes if i not in found]
    if missing:
        raise ProofError(f"stored hashes {missing[:5]} are missing from the ledger")
    return [found[i] for i in indexes]


class CursorHashReader:
    """Stored hashes read through a DB-API cursor, one query a batch."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        if not indexes:
            return []
        self.cur.execute(select_hashes(indexes))
        return in_order(self.cur.fetchall(), indexes)


@contextmanager
def hash_reader(read_engine: Engine) -> Iterator[HashReader]:
    """A reader on a bare DB-API connection: a proof costs one indexed query and no
    BEGIN/ROLLBACK around it (stored hashes never change, so no snapshot is needed)."""
    raw = read_engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            yield CursorHashReader(cur)
        finally:
            cur.close()
    finally:
        raw.close()


def read_size(read_engine: Engine) -> int:
    with read_engine.connect() as conn:
        return int(conn.execute(text("SELECT size FROM ledger_head WHERE id = 1")).one()[0])


def entry_from_row(idx: int, time_ms: int, leaf: bytes, lh: bytes) -> Entry:
    doc = decode_leaf(leaf)
    event = LedgerEvent(
        type=doc["type"],
        tenant=doc["tenant"],
        actor=doc["actor"],
        session=doc.get("session"),
        turn=doc.get("turn"),
        body=doc.get("body") or {},
    )
    return Entry(index=idx, time_ms=time_ms, leaf=leaf, leaf_hash=lh, event=event)


def read_entries(read_engine: Engine, where: str, params: dict[str, Any]) -> list[Entry]:
    """Entries matching ``where`` (a fixed condition of this package), in index order."""
    with read_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT idx, time_ms, leaf, leaf_hash FROM ledger_entries"
                f" WHERE {where} ORDER BY idx"
            ),
            params,
        ).all()
    return [entry_from_row(int(i), int(t), bytes(leaf), bytes(lh)) for i, t, leaf, lh in rows]


def read_checkpoints(read_engine: Engine, origin: str, *, newest_only: bool) -> list[Checkpoint]:
    sql = "SELECT size, root, note FROM ledger_checkpoints ORDER BY size"
    if newest_only:
        sql += " DESC LIMIT 1"
    with read_engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    return [Checkpoint(origin, int(s), bytes(r), str(n)) for s, r, n in rows]


def insert_side_rows(cur: Any, side: Sequence[SideRows], mark: str) -> None:
    """Insert ``side`` through ``cur``, ``mark`` being the driver's parameter marker."""
    for s in side:
        if s.rows:
            marks = ", ".join([mark] * len(s.columns))
            conflict = " ON CONFLICT DO NOTHING" if s.ignore_conflicts else ""
            cur.executemany(
                f"INSERT INTO {s.table} ({', '.join(s.columns)}) VALUES ({marks}){conflict}",
                s.rows,
            )


LOCATE_SQL = "SELECT idx, leaf_hash FROM ledger_entries WHERE idx >= {mark} ORDER BY idx"


def find_rows(found: Iterable[Any], rows: Sequence[LeafRow]) -> int | None:
    """The first index of ``rows`` (by leaf hash, consecutive) among ``found`` (idx, leaf_hash)."""
    want = [r.leaf_hash for r in rows]
    run: list[tuple[int, bytes]] = []
    for idx, lh in found:
        run.append((int(idx), bytes(lh)))
        if len(run) > len(want):
            run.pop(0)
        if len(run) == len(want) and all(h == w for (_, h), w in zip(run, want, strict=True)):
            return run[0][0]
    return None
