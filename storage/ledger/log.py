"""The append-only log: one process's handle on the shared, verifiable ledger.

A thin facade over three parts, each with its own contract:

- ``store.LedgerStore`` (``sqlite_store.py``, ``postgres_store.py``): gap-free order across
  processes and durability — an index is never returned before it is durable;
- ``batching.GroupCommit``: threads of this process share append transactions, and a full
  queue pushes back (``LedgerPushback``) instead of growing without bound;
- ``host_appends.HostAppends``: the processes of one host share them too, through one
  process elected to commit for all;
- ``merkle``: RFC 6962 math over the stored hashes (proofs, roots, the tree frontier).

Checkpoints are never signed inside an append: only ``issue_checkpoint`` (explicit calls) and
``checkpoint_if_due`` (the gateway's background job) sign, and they sign outside any database
lock, so a slow signer (a KMS) delays no append. With ``signer_lease`` set (several replicas on
one database), only the lease's holder signs: the background job of every other replica skips,
and an explicit call waits for the lease (``storage.leases``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from storage.leases import Lease
from storage.ledger.batching import BatchLimits, GroupCommit
from storage.ledger.checkpoint import Checkpoint, sign_checkpoint
from storage.ledger.events import Entry, LedgerEvent, SideRows
from storage.ledger.host_appends import shared
from storage.ledger.leaf import encode_leaf
from storage.ledger.merkle import (
    Frontier,
    ProofError,
    check_consistency,
    leaf_hash,
    prove_consistency,
    prove_inclusion,
    tree_hash,
)
from storage.ledger.note import NoteSigner, load_or_create_note_signer
from storage.ledger.open_store import open_store
from storage.ledger.store import (
    LeafRow,
    LedgerStore,
    hash_reader,
    read_checkpoints,
    read_entries,
    read_size,
)

__all__ = ["Ledger", "frontier_indexes", "load_or_create_note_signer"]

frontier_indexes = Frontier.indexes  # the stored-hash indexes an append of a tree reads


class _Pending(NamedTuple):
    """One caller's append, encoded and hashed in the caller's thread before it queues."""

    events: Sequence[LedgerEvent]
    rows: list[LeafRow]
    side: Sequence[SideRows]


class Ledger:
    """One process's handle on the shared log."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        origin: str,
        signer: NoteSigner,
        checkpoint_every_entries: int = 256,
        checkpoint_every_ms: int = 5_000,
        limits: BatchLimits | None = None,
    ) -> None:
        self.store = store
        self.engine = store.engine
        self.read_engine = store.read_engine
        self.origin = origin
        self.signer = signer
        self.checkpoint_every_entries = checkpoint_every_entries
        self.checkpoint_every_ms = checkpoint_every_ms
        self.commits: GroupCommit[_Pending, list[Entry]] = GroupCommit(self._flush, limits)
        self._cp_size = -1  # the newest checkpoint this process knows of (-1: not read yet)
        self._cp_time = time.monotonic()
        self.checkpoints_issued = 0  # checkpoints this process signed
        self.owns_engine = False  # ``open_ledger`` made the engine: ``close`` disposes it
        # Several processes on one database: only the holder of this lease signs checkpoints.
        self.signer_lease: Lease | None = None
        self._signing = threading.Lock()  # one signature at a time in this process too

    @classmethod
    def open(
        cls,
        engine: Engine,
        *,
        origin: str,
        signer: NoteSigner,
        checkpoint_every_entries: int = 256,
        checkpoint_every_ms: int = 5_000,
        limits: BatchLimits | None = None,
        share_appends: bool = True,
    ) -> Ledger:
        """A handle on the log in ``engine`` (migrated). ``checkpoint_if_due`` signs one when
        ``checkpoint_every_entries`` entries arrived or ``checkpoint_every_ms`` passed (0 turns
        a trigger off). With ``share_appends`` the processes of this host that open the same
        database commit their appends together (``host_appends``)."""
        store = open_store(engine)
        return cls(
            shared(store, limits) if share_appends else store,
            origin=origin,
            signer=signer,
            checkpoint_every_entries=checkpoint_every_entries,
            checkpoint_every_ms=checkpoint_every_ms,
            limits=limits,
        )

    def close(self) -> None:
        """Release this handle's connections (appends must have returned)."""
        self.store.close()
        if self.owns_engine:
            self.engine.dispose()

    @property
    def transactions(self) -> int:
        """Append transactions this process committed (fewer than appends: group commit)."""
        return self.commits.flushes

    @property
    def appended(self) -> int:
        """Entries this process appended."""
        return self.commits.entries

    # --- appending ------------------------------------------------------------------------------

    def append(self, events: Sequence[LedgerEvent], side: Sequence[SideRows] = ()) -> list[Entry]:
        """Append ``events`` in order; returns once they are durable, with their indexes.

        ``side`` rows are inserted in the same transaction (see ``SideRows``). Raises
        ``LedgerPushback`` (nothing written) when this process's append queue is full.
        """
        if not events:
            return []
        # Encoding and hashing happen here, in the caller's thread, overlapping the leader's
        # commit; ``time_ms`` is when the ledger received the event (entries from concurrent
        # writers may differ in order by a millisecond).
        now = int(time.time() * 1000)
        origin = self.origin
        rows = []
        nbytes = 0
        for ev in events:
            leaf = encode_leaf(origin, ev, now)
            rows.append(LeafRow(now, ev.type, ev.tenant, ev.turn, leaf, leaf_hash(leaf)))
            nbytes += len(leaf)
        return self.commits.submit(_Pending(events, rows, side), entries=len(rows), nbytes=nbytes)

    def _flush(self, batch: Sequence[_Pending]) -> list[list[Entry]]:
        """The one flush function of group commit: the whole batch in one store append."""
        if len(batch) == 1:
            rows, side = batch[0].rows, batch[0].side
        else:
            rows = [r for p in batch for r in p.rows]
            side = [s for p in batch for s in p.side]
        index = self.store.append(rows, side)
        out = []
        for p in batch:
            entries = []
            for ev, r in zip(p.events, p.rows, strict=True):
                entries.append(Entry(index, r.time_ms, r.leaf, r.leaf_hash, ev))
                index += 1
            out.append(entries)
        return out

    # --- reading --------------------------------------------------------------------------------

    def size(self) -> int:
        return read_size(self.read_engine)

    def entries(self, start: int, end: int) -> list[Entry]:
        return read_entries(self.read_engine, "idx >= :a AND idx < :b", {"a": start, "b": end})

    def entry(self, index: int) -> Entry:
        found = self.entries(index, index + 1)
        if not found:
            raise IndexError(f"entry {index} does not exist")
        return found[0]

    def entries_for_turn(self, turn_id: str) -> list[Entry]:
        return read_entries(self.read_engine, "turn_id = :t", {"t": turn_id})

    def root(self, size: int) -> bytes:
        """The RFC 6962 root of the first ``size`` entries."""
        with hash_reader(self.read_engine) as reader:
            return tree_hash(size, reader)

    def prove_inclusion(self, index: int, size: int) -> list[bytes]:
        """The audit path of entry ``index`` in the tree of ``size`` (one indexed query)."""
        with hash_reader(self.read_engine) as reader:
            return prove_inclusion(size, index, reader)

    def prove_consistency(self, old: int, new: int) -> list[bytes]:
        """The proof that the tree of size ``old`` is a prefix of the tree of size ``new``."""
        with hash_reader(self.read_engine) as reader:
            return prove_consistency(new, old, reader)

    # --- checkpoints ----------------------------------------------------------------------------

    def checkpoints(self) -> list[Checkpoint]:
        return read_checkpoints(self.read_engine, self.origin, newest_only=False)

    def latest_checkpoint(self) -> Checkpoint:
        """The newest signed checkpoint (one is issued if the log has none yet)."""
        return self._newest_stored_checkpoint() or self.issue_checkpoint()

    def _newest_stored_checkpoint(self) -> Checkpoint | None:
        found = read_checkpoints(self.read_engine, self.origin, newest_only=True)
        return found[0] if found else None

    def issue_checkpoint(self) -> Checkpoint:
        """Sign a checkpoint of the current size (see ``_issue_checkpoint``), one at a time."""
        with self._signing:
            return self._issue_checkpoint()

    def _issue_checkpoint(self) -> Checkpoint:
        """Sign a checkpoint of the current size, never one inconsistent with the last one.

        Committed entries and hashes never change, so the size, root and consistency proof are
        read without any lock and the signature is made outside any transaction; appends go on
        meanwhile. When the newest stored checkpoint already covers the size read (another
        signer got there first), it is returned instead of a new one.
        """
        lease = self.signer_lease
        if lease is not None:
            signed = self._await_signer(lease)
            if signed is not None:
                return signed
        size = self.size()
        newest = self._newest_stored_checkpoint()
        if newest is not None and newest.size >= size:
            if newest.size > self.size():
                raise ProofError(
                    f"refusing to sign: a checkpoint of size {newest.size} exists but the log has"
                    f" only {size} entries (entries were removed: run `custody ledger verify`)"
                )
            return self._known(newest)
        with hash_reader(self.read_engine) as reader:
            root = tree_hash(size, reader)
            if newest is not None and newest.size > 0:
                proof = prove_consistency(size, newest.size, reader)
                check_consistency(proof, size, root, newest.size, newest.root)
        cp = sign_checkpoint(self.signer, self.origin, size, root)
        if lease is not None and not lease.hold():  # lost while signing: another signs now
            stored = self._newest_stored_checkpoint()
            if stored is None or stored.size < size:
                raise ProofError("the checkpoint signer lease was lost while signing; retry")
            return self._known(stored)
        try:
            self.store.add_checkpoint(cp, int(time.time() * 1000))
        except IntegrityError:  # another process signed this size meanwhile: theirs stands
            stored = self._newest_stored_checkpoint()
            if stored is None or stored.size < size:
                raise
            return self._known(stored)
        self.checkpoints_issued += 1
        return self._known(cp)

    def _await_signer(self, lease: Lease) -> Checkpoint | None:
        """Until this process holds the signer lease (None: sign) or the holder has signed a
        checkpoint covering the log as it is now (that checkpoint); a holder that stops renewing
        loses the lease, so the wait ends."""
        size = self.size()
        deadline = time.monotonic() + (2 * lease.ttl_ms + 2 * self.checkpoint_every_ms) / 1000
        while not lease.hold():
            newest = self._newest_stored_checkpoint()
            if newest is not None and newest.size >= size:
                return self._known(newest)
            if time.monotonic() > deadline:
                raise ProofError(
                    f"the checkpoint signer lease is held by {lease.current()}, which signed no"
                    f" checkpoint of size {size} in time; retry later"
                )
            time.sleep(0.05)
        return None

    def _known(self, cp: Checkpoint) -> Checkpoint:
        self._cp_size, self._cp_time = max(self._cp_size, cp.size), time.monotonic()
        return cp

    def checkpoint_if_due(self) -> Checkpoint | None:
        """The background job's call: sign a checkpoint when entries arrived since the newest one
        and ``checkpoint_every_entries`` of them did or ``checkpoint_every_ms`` passed."""
        if self.checkpoint_every_entries <= 0 and self.checkpoint_every_ms <= 0:
            return None
        if self.signer_lease is not None and not self.signer_lease.hold():
            self._cp_size = -1  # another process signs; read its newest when this one takes over
            return None
        if self._cp_size < 0:
            stored = self._newest_stored_checkpoint()
            self._cp_size = stored.size if stored else 0
        size = self.size()
        if size <= self._cp_size:
            self._cp_time = time.monotonic()
            return None
        by_count = (
            self.checkpoint_every_entries > 0
            and size - self._cp_size >= self.checkpoint_every_entries
        )
        by_time = (
            self.checkpoint_every_ms > 0
            and (time.monotonic() - self._cp_time) * 1000 >= self.checkpoint_every_ms
        )
        return self.issue_checkpoint() if by_count or by_time else None
