"""Helpers shared by the ledger tests: open a ledger, append, verify through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from storage.blobs import Commitments, open_blob_store
from storage.db import make_engine, migrate
from storage.ledger.events import LedgerEvent
from storage.ledger.log import Ledger, load_or_create_note_signer

ORIGIN = "custody.test/ledger"


def open_ledger(url: str, data_dir: Path, **kw: int) -> tuple[Ledger, Commitments]:
    migrate(url)
    engine = make_engine(url)
    signer = load_or_create_note_signer(data_dir / "ledger-note.key", ORIGIN)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer, **kw)
    blobs = open_blob_store("file", data_dir=data_dir, engine=engine)
    return ledger, Commitments(engine, blobs)


def event(i: int, **body: object) -> LedgerEvent:
    return LedgerEvent(
        type="test.event", tenant="acme", actor="tester", turn=f"turn-{i}", body={"i": i, **body}
    )


def custody_cli(url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CUSTODY_DATABASE_URL": url,
        "CUSTODY_DATA_DIR": str(data_dir),
        "CUSTODY_LOG_ORIGIN": ORIGIN,
    }
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
