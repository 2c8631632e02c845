"""Helpers shared by the ledger tests: open a ledger, append, verify through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from storage.blobs import Commitments, open_blob_store
from storage.ledger import Ledger, LedgerEvent
from storage.ledger import open_ledger as open_storage_ledger

ORIGIN = "custody.test/ledger"


def open_ledger(url: str, data_dir: Path, **kw: Any) -> tuple[Ledger, Commitments]:
    """The ledger at ``url`` (key file in ``data_dir``) and a commitment store beside it."""
    ledger = open_storage_ledger(url, origin=ORIGIN, signer=data_dir / "ledger-note.key", **kw)
    blobs = open_blob_store("file", data_dir=data_dir, engine=ledger.engine)
    return ledger, Commitments(ledger.engine, blobs)


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
