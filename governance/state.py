"""Open an installation's state — database, ledger, blob store — the same way in every command.

The server, every CLI command and the tests go through these functions, so each of them finds the
same data location for the same settings. ``create=True`` (``serve``, ``keys create``) makes and
migrates an installation where there is none. ``create=False`` is for commands that only read:
when the data location holds no installation — the SQLite file is missing, the database has no
Custody schema, or the ledger's note key is missing — they get a ``StateError`` naming where Custody
looked, and nothing is created (no directory, no database file, no key). A read-only command must
never make a new, empty installation and then report "OK" about it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect

from governance.settings import Settings
from storage.blobs import BlobStore, Commitments, open_blob_store
from storage.db import is_sqlite, make_engine, migrate, normalise_url
from storage.ledger.log import Ledger, load_or_create_note_signer
from storage.ledger.note import NoteSigner
from storage.private_files import make_private_dir

SCHEMA_TABLE = "ledger_entries"  # present in every migrated Custody database


class StateError(RuntimeError):
    """The installation's state is missing or unusable; the message says where Custody looked."""


def _missing(settings: Settings, what: str) -> StateError:
    return StateError(
        f"no Custody installation at data dir {settings.data_dir} (database"
        f" {settings.masked_database_url}): {what}. Point CUSTODY_DATA_DIR (or data_dir in the"
        " config file, or CUSTODY_DATABASE_URL) at the installation in use; `custody doctor`"
        " shows what is resolved"
    )


def _sqlite_path(url: str) -> Path | None:
    path = normalise_url(url).split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def open_engine(settings: Settings, *, create: bool) -> Engine:
    """The migrated database engine of this installation (``StateError`` if absent and not
    ``create``)."""
    url = settings.effective_database_url
    if create:  # a whole installation: directory, schema and the ledger's note key
        make_private_dir(settings.data_dir)  # 0700: it holds prompts, images and keys
        migrate(url)
        note_signer(settings, create=True)
        return make_engine(url)
    if is_sqlite(url):
        path = _sqlite_path(url)
        if path is not None and not path.is_file():
            raise _missing(settings, f"the SQLite file {path} does not exist")
    engine = make_engine(url)
    try:
        has_schema = inspect(engine).has_table(SCHEMA_TABLE)
    except Exception as exc:
        engine.dispose()
        raise StateError(
            f"cannot open the database {settings.masked_database_url}: {exc}".splitlines()[0]
        ) from exc
    if not has_schema:
        engine.dispose()
        raise _missing(settings, "the database has no Custody schema")
    migrate(url)  # an existing installation from an older release: bring its schema up to date
    return engine


def note_signer(settings: Settings, *, create: bool) -> NoteSigner:
    """The Ed25519 key that signs this installation's checkpoints."""
    path = settings.note_key_path
    if not create and not path.is_file():
        raise _missing(settings, f"the ledger note key {path} does not exist")
    try:
        return load_or_create_note_signer(path, settings.log_origin)
    except ValueError as exc:
        raise StateError(f"{exc}; set CUSTODY_LOG_ORIGIN to the log's origin") from exc


def trust_anchors_pem(settings: Settings) -> str:
    """The PEM anchors this installation trusts, read without creating anything: the development
    root (when no signing certificate is configured and the dev PKI exists) plus
    ``trust_anchors_file``. ``OutputSigner.from_settings`` gives the same set when it signs."""
    pem = ""
    if settings.signing_cert_file is None:
        from governance.provenance.pki import DevPki  # cryptography.x509: only where it is read

        root = DevPki(settings.data_dir / "pki").root_cert
        if root.is_file():
            pem = root.read_text()
    if settings.trust_anchors_file:
        pem += Path(settings.trust_anchors_file).read_text()
    return pem


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
    """Database, ledger and blob store of this installation (see ``create`` above)."""
    settings.check_blob_store()  # before anything is opened or created
    engine = open_engine(settings, create=create)
    try:
        signer = note_signer(settings, create=create)
        blobs = open_blob_store(settings.blob_store, data_dir=settings.data_dir, engine=engine)
    except Exception:
        engine.dispose()
        raise
    ledger = Ledger.open(
        engine,
        origin=settings.log_origin,
        signer=signer,
        checkpoint_every_entries=settings.checkpoint_every_entries,
        checkpoint_every_ms=settings.checkpoint_every_ms,
    )
    return OpenState(settings, engine, ledger, blobs, signer)


def open_state_or_create(settings: Settings, *, command: str, warning: str) -> OpenState:
    """The installation, or (when there is none) a new one, after saying so on stderr: a thing
    made in a new installation (a key, an account) is unknown to a gateway using another one."""
    try:
        return open_state(settings, create=False)
    except StateError:
        print(
            f"custody {command}: there was no installation at {settings.data_dir}; creating one."
            f" {warning} (`custody doctor` prints what is resolved).",
            file=sys.stderr,
        )
        return open_state(settings, create=True)
