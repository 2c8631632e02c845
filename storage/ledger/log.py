"""The append-only log: durable, gap-free, group-committed appends and signed checkpoints.

Ordering: every append transaction reads and bumps a one-row counter (``ledger_head``) — locked
with ``SELECT ... FOR UPDATE`` on PostgreSQL, under ``BEGIN IMMEDIATE`` on SQLite — so any number of
processes get one total order with no gap and no fork. On PostgreSQL the whole append (lock, leaf
and interior hashes, inserts) is one call of the ``custody_ledger_append`` function (migration
0002); on SQLite the stored hashes are computed here from the cached frontier.

Group commit: threads of one process queue their events; whichever finds no commit in flight
becomes the leader and commits everything queued in one transaction (one fsync), then wakes the
others. Nobody returns before their entries are durable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text

from storage.db import make_engine
from storage.ledger.checkpoint import Checkpoint, sign_checkpoint
from storage.ledger.events import Entry, LedgerEvent, SideRows
from storage.ledger.leaf import decode_leaf, encode_leaf
from storage.ledger.merkle import (
    HashReader,
    ProofError,
    check_consistency,
    leaf_hash,
    prove_consistency,
    prove_inclusion,
    stored_hash_count,
    stored_hash_index,
    stored_hashes_for_records,
    tree_hash,
)
from storage.ledger.note import NoteSigner
from storage.private_files import make_private_dir


def _select_hashes(indexes: Sequence[int]) -> str:
    return f"SELECT idx, hash FROM ledger_hashes WHERE idx IN ({_ints(sorted(set(indexes)))})"


def _in_order(rows: Iterable[Any], indexes: Sequence[int]) -> list[bytes]:
    """The hashes of ``rows`` (idx, hash) in the order of ``indexes``; every one must exist."""
    found = {int(i): bytes(h) for i, h in rows}
    missing = [i for i in indexes if i not in found]
    if missing:
        raise ProofError(f"stored hashes {missing[:5]} are missing from the ledger")
    return [found[i] for i in indexes]


class ConnectionHashReader:
    """Stored hashes read through one open connection (one query per batch)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        if not indexes:
            return []
        return _in_order(self.conn.execute(text(_select_hashes(indexes))).all(), indexes)


# time_ms, type, tenant, turn, leaf, leaf hash
_Row = tuple[int, str, str, "str | None", bytes, bytes]


class _CursorHashReader:
    """Stored hashes read through a raw DB-API cursor (the append hot path), one query a batch."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        if not indexes:
            return []
        self.cur.execute(_select_hashes(indexes))
        return _in_order(self.cur.fetchall(), indexes)


def _insert_side(cur: Any, side: list[SideRows], mark: str) -> None:
    for s in side:
        if s.rows:
            marks = ", ".join([mark] * len(s.columns))
            cur.executemany(
                f"INSERT INTO {s.table} ({', '.join(s.columns)}) VALUES ({marks})", s.rows
            )


def _insert_sqlite(
    cur: Any, size: int, rows: list[_Row], first_hash: int, stored: list[bytes]
) -> None:
    cur.executemany(
        "INSERT INTO ledger_entries (idx, time_ms, type, tenant, turn_id, leaf, leaf_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(size + i, *row) for i, row in enumerate(rows)],
    )
    cur.executemany(
        "INSERT INTO ledger_hashes (idx, hash) VALUES (?, ?)",
        [(first_hash + i, h) for i, h in enumerate(stored)],
    )
    cur.execute("UPDATE ledger_head SET size = ? WHERE id = 1", (size + len(rows),))


def _insert_postgres(cur: Any, rows: list[_Row]) -> int:
    """Append ``rows`` through the SECURITY DEFINER append function; returns the first index."""
    cur.execute(
        "SELECT custody_ledger_append(%s::bigint[], %s::text[], %s::text[], %s::text[],"
        " %s::bytea[])",
        (
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
        ),
    )
    return int(cur.fetchone()[0])


class _HashCache:
    """Stored hashes this process has seen, kept for the current frontier only.

    Stored hashes never change once committed, so a cached one is always right; after each
    commit only the frontier of the new size is kept (the hashes the next append needs). When
    another process appended meanwhile, the hashes it added are read in one batch.
    """

    def __init__(self) -> None:
        self.known: dict[int, bytes] = {}
        self.hits = 0

    def bind(self, db: HashReader) -> _CachedReader:
        return _CachedReader(self, db)

    def committed(self, size: int, first: int, stored: Sequence[bytes]) -> None:
        self.known.update((first + i, h) for i, h in enumerate(stored))
        keep = frontier_indexes(size)
        self.known = {i: self.known[i] for i in keep if i in self.known}


class _CachedReader:
    def __init__(self, cache: _HashCache, db: HashReader) -> None:
        self.cache = cache
        self.db = db

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        known = self.cache.known
        missing = [i for i in indexes if i not in known]
        if missing:
            known.update(zip(missing, self.db.read_hashes(missing), strict=True))
        else:
            self.cache.hits += 1
        return [known[i] for i in indexes]


def frontier_indexes(size: int) -> list[int]:
    """Stored-hash indexes of the complete subtrees whose concatenation is leaves [0, size)."""
    out = []
    lo = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append(stored_hash_index(level, lo >> level))
            lo += 1 << level
    return out


def _ints(values: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in values)


@dataclass
class _Pending:
    events: list[LedgerEvent]
    time_ms: int
    leaves: list[bytes]
    hashes: list[bytes]
    side: list[SideRows] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


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


class Ledger:
    """One process's handle on the shared log."""

    def __init__(
        self,
        engine: Engine,
        *,
        origin: str,
        signer: NoteSigner,
        checkpoint_every_entries: int = 256,
        checkpoint_every_ms: int = 5_000,
        commit_delay_ms: float = 1.0,
    ) -> None:
        self.engine = engine
        self.read_engine = _read_engine(engine)
        self.origin = origin
        self.signer = signer
        self.checkpoint_every_entries = checkpoint_every_entries
        self.checkpoint_every_ms = checkpoint_every_ms
        self.is_postgres = engine.dialect.name == "postgresql"
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False
        self._cp_size = -1
        self._cp_time = time.monotonic()
        self._head = 0
        self._cp_lock = threading.Lock()
        self._gathering = False
        self._last_callers = 1
        self._last_commit_s = 0.0
        self.commit_delay_ms = commit_delay_ms
        self._hashes = _HashCache()
        self._writer: Any = None  # the leader's DB-API connection
        self.transactions = 0  # append transactions committed by this process (group commit)
        self.appended = 0  # entries appended by this process
        self.checkpoints_issued = 0  # checkpoints this process signed

    @classmethod
    def open(
        cls,
        engine: Engine,
        *,
        origin: str,
        signer: NoteSigner,
        checkpoint_every_entries: int = 256,
        checkpoint_every_ms: int = 5_000,
        commit_delay_ms: float = 1.0,
    ) -> Ledger:
        """A handle on the log in ``engine`` (migrated), signing checkpoints with ``signer``:
        one every ``checkpoint_every_entries`` entries or ``checkpoint_every_ms`` ms."""
        return cls(
            engine,
            origin=origin,
            signer=signer,
            checkpoint_every_entries=checkpoint_every_entries,
            checkpoint_every_ms=checkpoint_every_ms,
            commit_delay_ms=commit_delay_ms,
        )

    def close(self) -> None:
        """Release this handle's connections (appends must have returned)."""
        with self._cond:
            self._drop_writer(failed=False)
        self.read_engine.dispose()

    # --- appending ------------------------------------------------------------------------------

    def append(self, events: Sequence[LedgerEvent], side: Sequence[SideRows] = ()) -> list[Entry]:
        """Append ``events`` in order; returns once they are durable, with their indexes.

        ``side`` rows are inserted in the same transaction (see ``SideRows``)."""
        if not events:
            return []
        # Encoding and hashing happen here, in the caller's thread, overlapping the leader's
        # fsync; the leader only talks to the database. ``time_ms`` is when the ledger received
        # the event (entries from concurrent writers may differ in order by a millisecond).
        now = int(time.time() * 1000)
        leaves = [encode_leaf(self.origin, ev, now) for ev in events]
        pending = _Pending(
            list(events), now, leaves, [leaf_hash(leaf) for leaf in leaves], list(side)
        )
        with self._cond:
            self._queue.append(pending)
            if self._gathering:
                self._cond.notify_all()
            while self._writing and not pending.done:
                self._cond.wait()
            if pending.done:
                batch: list[_Pending] = []
            else:
                self._writing = True
                self._gather()
                batch, self._queue = self._queue, []
        if batch:
            started = time.monotonic()
            try:
                self._commit(batch)
                self._last_callers = len(batch)
                self._last_commit_s = time.monotonic() - started
            except BaseException as exc:  # never leave a follower waiting on a dead leader
                for p in batch:
                    if not p.done:
                        p.error, p.done = exc, True
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
            if pending.error is None:
                self._checkpoint_after_append()
        if pending.error is not None:
            raise pending.error
        return pending.entries

    def _gather(self) -> None:
        """As a new leader, wait briefly for the callers of the previous batch to come back.

        Without this, callers that just returned arrive a moment after a new leader started
        alone, and batches alternate 1, n-1, 1, ... (PostgreSQL's ``commit_delay`` idea). The
        wait is skipped for a lone writer and never exceeds the last commit's duration or
        ``commit_delay_ms``. Called with ``self._cond`` held.
        """
        want = self._last_callers
        if want <= 1 or self.commit_delay_ms <= 0 or len(self._queue) >= want:
            return
        delay = min(self.commit_delay_ms / 1000, self._last_commit_s)
        deadline = time.monotonic() + delay
        self._gathering = True
        try:
            while len(self._queue) < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        finally:
            self._gathering = False

    def _commit(self, batch: list[_Pending]) -> None:
        rows: list[_Row] = [
            (p.time_ms, ev.type, ev.tenant, ev.turn, leaf, lh)
            for p in batch
            for ev, leaf, lh in zip(p.events, p.leaves, p.hashes, strict=True)
        ]
        try:
            size, first_hash, stored = self._write(rows, [s for p in batch for s in p.side])
        except Exception as exc:
            for p in batch:
                p.error, p.done = exc, True
            return
        if stored:  # SQLite: the frontier for the next append; PostgreSQL computes its own
            self._hashes.committed(size + len(rows), first_hash, stored)
        self.transactions += 1
        self.appended += len(rows)
        self._head = size + len(rows)
        index = size
        for p in batch:
            for ev, leaf, lh in zip(p.events, p.leaves, p.hashes, strict=True):
                p.entries.append(Entry(index, p.time_ms, leaf, lh, ev))
                index += 1
            p.done = True

    def _write(self, rows: list[_Row], side: list[SideRows]) -> tuple[int, int, list[bytes]]:
        """One append transaction on the leader's own DB-API connection (the hot path skips
        the pool and SQLAlchemy's per-statement overhead): lock the head, compute the new stored
        hashes, insert, commit. Returns the old size, the first new stored-hash index and the
        new stored hashes."""
        if self._writer is None:
            self._writer = self.engine.raw_connection()
        raw = self._writer
        cur = raw.cursor()
        try:
            if self.is_postgres:
                result = self._write_postgres(cur, rows)
                _insert_side(cur, side, "%s")
            else:
                result = self._write_sqlite(cur, rows)
                _insert_side(cur, side, "?")
            raw.commit()
        except BaseException:
            self._drop_writer(failed=True)
            raise
        finally:
            cur.close()
        return result

    def _write_sqlite(self, cur: Any, rows: list[_Row]) -> tuple[int, int, list[bytes]]:
        cur.execute("BEGIN IMMEDIATE")  # the write lock, before the head is read
        cur.execute("SELECT size FROM ledger_head WHERE id = 1")
        size = int(cur.fetchone()[0])
        stored = stored_hashes_for_records(
            size, [r[5] for r in rows], self._hashes.bind(_CursorHashReader(cur))
        )
        _insert_sqlite(cur, size, rows, stored_hash_count(size), stored)
        return size, stored_hash_count(size), stored

    def _write_postgres(self, cur: Any, rows: list[_Row]) -> tuple[int, int, list[bytes]]:
        # One round trip: ``custody_ledger_append`` (migration 0002) locks the head row,
        # computes the leaf and interior hashes in the tlog layout and inserts everything, so
        # the lock is held for the server's work only, never across a client round trip.
        size = _insert_postgres(cur, rows)
        return size, stored_hash_count(size), []

    def _drop_writer(self, *, failed: bool) -> None:
        raw, self._writer = self._writer, None
        if raw is None:
            return
        try:
            if failed:
                raw.rollback()
            raw.close()
        except Exception:  # a broken connection: let the pool forget it
            raw.invalidate()

    def _lock_head(self, conn: Connection) -> int:
        """The current size, with the counter row locked until the transaction ends.

        PostgreSQL: the row lock (``FOR UPDATE`` inside ``custody_ledger_lock_head``); SQLite:
        the write lock ``BEGIN IMMEDIATE`` took before this read.
        """
        sql = (
            "SELECT custody_ledger_lock_head()"
            if self.is_postgres
            else "SELECT size FROM ledger_head WHERE id = 1"
        )
        return int(conn.execute(text(sql)).one()[0])

    # --- reading --------------------------------------------------------------------------------

    def size(self) -> int:
        with self.read_engine.connect() as conn:
            return int(conn.execute(text("SELECT size FROM ledger_head WHERE id = 1")).one()[0])

    def entries(self, start: int, end: int) -> list[Entry]:
        with self.read_engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT idx, time_ms, leaf, leaf_hash FROM ledger_entries"
                    " WHERE idx >= :a AND idx < :b ORDER BY idx"
                ),
                {"a": start, "b": end},
            ).all()
        return [entry_from_row(int(i), int(t), bytes(leaf), bytes(lh)) for i, t, leaf, lh in rows]

    def entry(self, index: int) -> Entry:
        found = self.entries(index, index + 1)
        if not found:
            raise IndexError(f"entry {index} does not exist")
        return found[0]

    def entries_for_turn(self, turn_id: str) -> list[Entry]:
        with self.read_engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT idx, time_ms, leaf, leaf_hash FROM ledger_entries"
                    " WHERE turn_id = :t ORDER BY idx"
                ),
                {"t": turn_id},
            ).all()
        return [entry_from_row(int(i), int(t), bytes(leaf), bytes(lh)) for i, t, leaf, lh in rows]

    def root(self, size: int) -> bytes:
        """The RFC 6962 root of the first ``size`` entries."""
        with self._hash_reader() as reader:
            return tree_hash(size, reader)

    def prove_inclusion(self, index: int, size: int) -> list[bytes]:
        """The audit path of entry ``index`` in the tree of ``size`` (one indexed query)."""
        with self._hash_reader() as reader:
            return prove_inclusion(size, index, reader)

    def prove_consistency(self, old: int, new: int) -> list[bytes]:
        """The proof that the tree of size ``old`` is a prefix of the tree of size ``new``."""
        with self._hash_reader() as reader:
            return prove_consistency(new, old, reader)

    @contextmanager
    def _hash_reader(self) -> Iterator[HashReader]:
        # A bare DB-API connection in autocommit: a proof costs one indexed query, no
        # BEGIN/ROLLBACK around it (stored hashes never change, so no snapshot is needed).
        raw = self.read_engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                yield _CursorHashReader(cur)
            finally:
                cur.close()
        finally:
            raw.close()

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoints(self) -> list[Checkpoint]:
        with self.read_engine.connect() as conn:
            rows = conn.execute(
                text("SELECT size, root, note FROM ledger_checkpoints ORDER BY size")
            ).all()
        return [Checkpoint(self.origin, int(s), bytes(r), str(n)) for s, r, n in rows]

    def latest_checkpoint(self) -> Checkpoint:
        """The newest signed checkpoint (one is issued if the log has none yet)."""
        return self._newest_stored_checkpoint() or self.issue_checkpoint()

    def _newest_stored_checkpoint(self) -> Checkpoint | None:
        with self.read_engine.connect() as conn:
            row = conn.execute(
                text("SELECT size, root, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
            ).first()
        return (
            None
            if row is None
            else Checkpoint(self.origin, int(row[0]), bytes(row[1]), str(row[2]))
        )

    def issue_checkpoint(self) -> Checkpoint:
        """Sign a checkpoint of the current size, never one inconsistent with the last one.

        Under the head lock, so no append or other signer interleaves; when the newest stored
        checkpoint already covers the current size it is returned instead of a new one.
        """
        with self.engine.begin() as conn:
            size = self._lock_head(conn)
            reader = ConnectionHashReader(conn)
            row = conn.execute(
                text("SELECT size, root, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
            ).first()
            if row is not None and int(row[0]) == size:
                cp = Checkpoint(self.origin, size, bytes(row[1]), str(row[2]))
            else:
                root = tree_hash(size, reader)
                if row is not None and int(row[0]) > 0:
                    old_size, old_root = int(row[0]), bytes(row[1])
                    if old_size > size:
                        raise ProofError(
                            f"refusing to sign: a checkpoint of size {old_size} exists but the"
                            f" log has only {size} entries"
                        )
                    proof = prove_consistency(size, old_size, reader)
                    check_consistency(proof, size, root, old_size, old_root)
                cp = sign_checkpoint(self.signer, self.origin, size, root)
                params = {"s": size, "t": int(time.time() * 1000), "r": root, "n": cp.note}
                sql = (
                    "SELECT custody_ledger_add_checkpoint(:s, :t, :r, :n)"
                    if self.is_postgres
                    else "INSERT INTO ledger_checkpoints (size, time_ms, root, note)"
                    " VALUES (:s, :t, :r, :n)"
                )
                conn.execute(text(sql), params)
                self.checkpoints_issued += 1
        self._cp_size, self._cp_time = cp.size, time.monotonic()
        return cp

    def checkpoint_if_due(self) -> Checkpoint | None:
        """Issue a checkpoint when entries arrived and ``checkpoint_every_ms`` has passed."""
        if (time.monotonic() - self._cp_time) * 1000 < self.checkpoint_every_ms:
            return None
        if self.size() == self._cp_size:
            self._cp_time = time.monotonic()
            return None
        return self.issue_checkpoint()

    def _checkpoint_after_append(self) -> None:
        """Every ``checkpoint_every_entries`` entries, or ``checkpoint_every_ms`` after the last
        checkpoint, whichever comes first (0 turns a trigger off)."""
        if self.checkpoint_every_entries <= 0 and self.checkpoint_every_ms <= 0:
            return
        with self._cp_lock:
            if self._cp_size < 0:
                stored = self._newest_stored_checkpoint()
                self._cp_size = stored.size if stored else 0
            if self._head <= self._cp_size:
                return
            by_count = (
                self.checkpoint_every_entries > 0
                and self._head - self._cp_size >= self.checkpoint_every_entries
            )
            by_time = (
                self.checkpoint_every_ms > 0
                and (time.monotonic() - self._cp_time) * 1000 >= self.checkpoint_every_ms
            )
            if by_count or by_time:
                self.issue_checkpoint()


def _read_engine(engine: Engine) -> Engine:
    """An engine for proofs and reads. SQLite: no write lock at BEGIN. PostgreSQL: autocommit
    and no pre-ping, so a proof is one round trip (a dropped connection fails one read and is
    replaced)."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        return make_engine(url, immediate=False)
    return create_engine(
        url, pool_size=10, max_overflow=10, isolation_level="AUTOCOMMIT", pool_recycle=300
    )


def load_or_create_note_signer(path: Path, origin: str) -> NoteSigner:
    """The log's Ed25519 note key: read from ``path``, or generated there (mode 0600, created
    with that mode before the key is written; a directory made for it is 0700)."""
    path = Path(path)
    if path.exists():
        signer = NoteSigner.from_key_string(path.read_text())
        if signer.name != origin:
            raise ValueError(
                f"the log key in {path} is for {signer.name!r}, not this log's origin {origin!r}"
            )
        return signer
    signer = NoteSigner.generate(origin)
    make_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.key_string() + "\n")
    return signer
