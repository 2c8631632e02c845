"""The append-only log: durable, gap-free, group-committed appends and signed checkpoints.

Ordering: every append transaction reads and bumps a one-row counter (``ledger_head``) — locked
with ``SELECT ... FOR UPDATE`` on PostgreSQL, under ``BEGIN IMMEDIATE`` on SQLite — so any number of
processes get one total order with no gap and no fork.

Group commit: threads of one process queue their events; whichever finds no commit in flight
becomes the leader and commits everything queued in one transaction (one fsync), then wakes the
others. Nobody returns before their entries are durable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine, text

from storage.db import make_engine
from storage.ledger.checkpoint import Checkpoint, sign_checkpoint
from storage.ledger.events import Entry, LedgerEvent
from storage.ledger.leaf import decode_leaf, encode_leaf
from storage.ledger.merkle import (
    ProofError,
    check_consistency,
    leaf_hash,
    prove_consistency,
    prove_inclusion,
    stored_hash_count,
    stored_hashes_for_records,
    tree_hash,
)
from storage.ledger.note import NoteSigner


class ConnectionHashReader:
    """Stored hashes read through one open connection (one query per batch)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        if not indexes:
            return []
        wanted = sorted(set(indexes))
        rows = self.conn.execute(
            text(f"SELECT idx, hash FROM ledger_hashes WHERE idx IN ({_ints(wanted)})")
        ).all()
        found = {int(i): bytes(h) for i, h in rows}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise ProofError(f"stored hashes {missing[:5]} are missing from the ledger")
        return [found[i] for i in indexes]


def _ints(values: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in values)


@dataclass
class _Pending:
    events: list[LedgerEvent]
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
    ) -> None:
        self.engine = engine
        self.read_engine = make_engine(
            engine.url.render_as_string(hide_password=False), immediate=False
        )
        self.origin = origin
        self.signer = signer
        self.checkpoint_every_entries = checkpoint_every_entries
        self.checkpoint_every_ms = checkpoint_every_ms
        self.is_postgres = engine.dialect.name == "postgresql"
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False
        self._last_time_ms = 0
        self._cp_size = -1
        self._cp_time = 0.0
        self._head = 0
        self.transactions = 0  # append transactions committed by this process (group commit)
        self.appended = 0

    @classmethod
    def open(
        cls,
        engine: Engine,
        *,
        origin: str,
        signer: NoteSigner,
        checkpoint_every_entries: int = 256,
        checkpoint_every_ms: int = 5_000,
    ) -> Ledger:
        return cls(
            engine,
            origin=origin,
            signer=signer,
            checkpoint_every_entries=checkpoint_every_entries,
            checkpoint_every_ms=checkpoint_every_ms,
        )

    def close(self) -> None:
        self.read_engine.dispose()

    # --- appending ------------------------------------------------------------------------------

    def append(self, events: Sequence[LedgerEvent]) -> list[Entry]:
        """Append ``events`` in order; returns once they are durable, with their indexes."""
        pending = _Pending(list(events))
        if not pending.events:
            return []
        with self._cond:
            self._queue.append(pending)
            while self._writing and not pending.done:
                self._cond.wait()
            if not pending.done:
                self._writing = True
                batch, self._queue = self._queue, []
            else:
                batch = []
        if batch:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
            self._maybe_checkpoint_by_count()
        if pending.error is not None:
            raise pending.error
        return pending.entries

    def _commit(self, batch: list[_Pending]) -> None:
        now = max(int(time.time() * 1000), self._last_time_ms)
        self._last_time_ms = now
        leaves: list[tuple[_Pending, LedgerEvent, bytes]] = []
        for p in batch:
            try:
                encoded = [(p, ev, encode_leaf(self.origin, ev, now)) for ev in p.events]
            except Exception as exc:  # a bad event fails its own caller, not the batch
                p.error, p.done = exc, True
                continue
            leaves.extend(encoded)
        if not leaves:
            return
        hashes = [leaf_hash(leaf) for _, _, leaf in leaves]
        try:
            with self.engine.begin() as conn:
                size = self._lock_head(conn)
                stored = stored_hashes_for_records(size, hashes, ConnectionHashReader(conn))
                conn.execute(
                    text(
                        "INSERT INTO ledger_entries (idx, time_ms, type, tenant, turn_id, leaf,"
                        " leaf_hash) VALUES (:idx, :t, :type, :tenant, :turn, :leaf, :lh)"
                    ),
                    [
                        {
                            "idx": size + i,
                            "t": now,
                            "type": ev.type,
                            "tenant": ev.tenant,
                            "turn": ev.turn,
                            "leaf": leaf,
                            "lh": lh,
                        }
                        for i, ((_, ev, leaf), lh) in enumerate(zip(leaves, hashes, strict=True))
                    ],
                )
                first_hash = stored_hash_count(size)
                conn.execute(
                    text("INSERT INTO ledger_hashes (idx, hash) VALUES (:idx, :h)"),
                    [{"idx": first_hash + i, "h": h} for i, h in enumerate(stored)],
                )
                conn.execute(
                    text("UPDATE ledger_head SET size = :s WHERE id = 1"),
                    {"s": size + len(leaves)},
                )
        except Exception as exc:
            for p in batch:
                if not p.done:
                    p.error, p.done = exc, True
            return
        self.transactions += 1
        self.appended += len(leaves)
        self._head = size + len(leaves)
        for i, ((p, ev, leaf), lh) in enumerate(zip(leaves, hashes, strict=True)):
            p.entries.append(Entry(size + i, now, leaf, lh, ev))
        for p in batch:
            p.done = True

    def _lock_head(self, conn: Connection) -> int:
        """The current size, with the counter row locked until the transaction ends."""
        lock = " FOR UPDATE" if self.is_postgres else ""
        return int(conn.execute(text(f"SELECT size FROM ledger_head WHERE id = 1{lock}")).one()[0])

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
        with self.read_engine.connect() as conn:
            return tree_hash(size, ConnectionHashReader(conn))

    def prove_inclusion(self, index: int, size: int) -> list[bytes]:
        with self.read_engine.connect() as conn:
            return prove_inclusion(size, index, ConnectionHashReader(conn))

    def prove_consistency(self, old: int, new: int) -> list[bytes]:
        with self.read_engine.connect() as conn:
            return prove_consistency(new, old, ConnectionHashReader(conn))

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoints(self) -> list[Checkpoint]:
        with self.read_engine.connect() as conn:
            rows = conn.execute(
                text("SELECT size, root, note FROM ledger_checkpoints ORDER BY size")
            ).all()
        return [Checkpoint(self.origin, int(s), bytes(r), str(n)) for s, r, n in rows]

    def latest_checkpoint(self) -> Checkpoint:
        """The newest signed checkpoint (one is issued if the log has none yet)."""
        with self.read_engine.connect() as conn:
            row = conn.execute(
                text("SELECT size, root, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
            ).first()
        if row is None:
            return self.issue_checkpoint()
        return Checkpoint(self.origin, int(row[0]), bytes(row[1]), str(row[2]))

    def issue_checkpoint(self) -> Checkpoint:
        """Sign a checkpoint of the current size, never one inconsistent with the last one."""
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
                    proof = prove_consistency(size, old_size, reader)
                    check_consistency(proof, size, root, old_size, old_root)
                cp = sign_checkpoint(self.signer, self.origin, size, root)
                conn.execute(
                    text(
                        "INSERT INTO ledger_checkpoints (size, time_ms, root, note)"
                        " VALUES (:s, :t, :r, :n)"
                    ),
                    {"s": size, "t": int(time.time() * 1000), "r": root, "n": cp.note},
                )
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

    def _maybe_checkpoint_by_count(self) -> None:
        if self._cp_size < 0:
            self._cp_size = self.latest_checkpoint().size
        due = self._head - self._cp_size >= self.checkpoint_every_entries
        if self.checkpoint_every_entries > 0 and due:
            self.issue_checkpoint()


def load_or_create_note_signer(path: Path, origin: str) -> NoteSigner:
    """The log's Ed25519 note key: read from ``path``, or generated there (mode 0600)."""
    path = Path(path)
    if path.exists():
        signer = NoteSigner.from_key_string(path.read_text())
        if signer.name != origin:
            raise ValueError(
                f"the log key in {path} is for {signer.name!r}, not this log's origin {origin!r}"
            )
        return signer
    signer = NoteSigner.generate(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.key_string() + "\n")
    return signer
