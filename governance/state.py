"""Open an installation's state — database, ledger, blob store — the same way in every command.

The server, every CLI command and the tests go through these functions, so each of them finds the
same data location for the same settings. ``create=False`` is for commands that only read: they
must never make a new, empty installation and then report on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from governance.settings import Settings
from storage.blobs import BlobStore, Commitments, open_blob_store
from storage.db import make_engine, migrate
from storage.ledger.log import Ledger, load_or_create_note_signer
from storage.ledger.note import NoteSigner
from storage.private_files import make_private_dir


class StateError(RuntimeError):
    """The installation's state is missing or unusable; the message says where Custody looked."""


def open_engine(settings: Settings, *, create: bool) -> Engine:
    """The migrated database engine of this installation."""
    if create:
        make_private_dir(settings.data_dir)  # 0700: it holds prompts, images and keys
    url = settings.effective_database_url
    migrate(url)
    return make_engine(url)


def note_signer(settings: Settings, *, create: bool) -> NoteSigner:
    """The Ed25519 key that signs this installation's checkpoints."""
    path = settings.log_key_file or settings.data_dir / "ledger-note.key"
    return load_or_create_note_signer(path, settings.log_origin)


@dataclass
class OpenState:
    """An installation opened by a command: close it when done."""

    settings: Settings
    engine: Engine
    ledger: Ledger
    blobs: BlobStore
    signer: NoteSigner

    @property
    def commitments(self) -> Commitments:
        return Commitments(self.engine, self.blobs)

    def close(self) -> None:
        self.ledger.close()
        self.engine.dispose()


def open_state(settings: Settings, *, create: bool) -> OpenState:
    """Database, ledger and blob store of this installation."""
    engine = open_engine(settings, create=create)
    signer = note_signer(settings, create=create)
    ledger = Ledger.open(engine, origin=settings.log_origin, signer=signer)
    blobs = open_blob_store(settings.blob_store, data_dir=settings.data_dir, engine=engine)
    return OpenState(settings, engine, ledger, blobs, signer)
