"""What the rest of Custody hands the ledger, and what it gets back.

An event is one leaf. Its ``body`` carries facts and *commitments* to content (see
``storage.blobs.BlobStore.put_committed``), never the content itself: prompts, images, masks and
manifests stay in the blob store, where they can be erased without breaking the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LedgerEvent:
    """One event to append. The ledger stamps the time (integer milliseconds) and the index."""

    type: str  # "turn.received", "policy.decided", "upstream.returned", "output.signed", ...
    tenant: str
    actor: str
    session: str | None = None
    turn: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """An appended, durable leaf: its position, its bytes and its RFC 6962 leaf hash."""

    index: int
    time_ms: int
    leaf: bytes  # RFC 8785 canonical JSON
    leaf_hash: bytes  # SHA-256(0x00 || leaf)
    event: LedgerEvent


@dataclass(frozen=True)
class SideRows:
    """Rows of another table, committed in the same transaction as an append: both or neither.

    For index rows that must agree with the ledger (a turn's summary, its commitments' salts).
    A failing insert fails the whole group-committed batch, so only rows that cannot conflict
    (fresh keys) belong here.
    """

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    # Rows that several concurrent appends may each carry (one session named by a client key):
    # the first commits, the others are skipped (ON CONFLICT DO NOTHING) instead of failing.
    ignore_conflicts: bool = False
