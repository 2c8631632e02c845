"""The verifiable ledger: RFC 6962 Merkle math, leaves, signed notes, checkpoints and proofs.

What callers may use is listed in ``__all__`` and importable from here; the modules behind it
(stores, batching, the Merkle layout) are the ledger's own and may change shape. Open a ledger
with ``open_ledger`` — the service, the CLIs and the tests all do, so each finds the same data
the same way.
"""

from __future__ import annotations

from pathlib import Path

from storage.db import make_engine, migrate
from storage.ledger.batching import BatchLimits, LedgerPushback
from storage.ledger.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from storage.ledger.events import Entry, LedgerEvent, SideRows
from storage.ledger.leaf import LeafError
from storage.ledger.log import Ledger
from storage.ledger.merkle import ProofError, check_consistency, check_inclusion
from storage.ledger.note import (
    CallbackNoteSigner,
    Ed25519NoteSigner,
    NoteError,
    NoteSigner,
    NoteVerifier,
    load_or_create_note_signer,
)
from storage.ledger.verify import VerifyReport, verify_ledger

__all__ = [
    "BatchLimits",
    "CallbackNoteSigner",
    "Checkpoint",
    "CheckpointError",
    "Ed25519NoteSigner",
    "Entry",
    "LeafError",
    "Ledger",
    "LedgerEvent",
    "LedgerPushback",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "ProofError",
    "SideRows",
    "VerifyReport",
    "check_consistency",
    "check_inclusion",
    "load_or_create_note_signer",
    "open_checkpoint",
    "open_ledger",
    "verify_ledger",
]


def open_ledger(
    url: str,
    *,
    origin: str,
    signer: NoteSigner | Path,
    checkpoint_every_entries: int = 256,
    checkpoint_every_ms: int = 5_000,
    limits: BatchLimits | None = None,
    pool_size: int = 10,
    migrate_schema: bool = True,
) -> Ledger:
    """The ledger in the database at ``url`` (migrated first unless ``migrate_schema=False``).

    ``signer`` is the checkpoint key: a ``NoteSigner`` (a KMS through ``CallbackNoteSigner``),
    or the path of the Ed25519 key file, created there (mode 0600) if missing. The ledger owns
    the engine it makes: ``ledger.close()`` disposes it; share it as ``ledger.engine``.
    """
    if migrate_schema:
        migrate(url)
    key = load_or_create_note_signer(signer, origin) if isinstance(signer, Path) else signer
    engine = make_engine(url, pool_size=pool_size)
    ledger = Ledger.open(
        engine,
        origin=origin,
        signer=key,
        checkpoint_every_entries=checkpoint_every_entries,
        checkpoint_every_ms=checkpoint_every_ms,
        limits=limits,
    )
    ledger.owns_engine = True
    return ledger
