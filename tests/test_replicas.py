"""Two gateway replicas sharing one database: one ledger, gap-free, no fork (SQLite and PG).

Each replica is a full Custody app (its own engine, ledger handle, key cache and emulator) serving
on its own port; on PostgreSQL they also share the database blob store.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import pytest

from storage.blobs import Commitments
from storage.db import is_sqlite
from storage.ledger.note import NoteVerifier
from storage.ledger.verify import verify_ledger
from tests.conftest import start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

TURNS_PER_REPLICA = 12


def _turn(base_url: str, key: str, n: int) -> int:
    return httpx.post(
        f"{base_url}/v1beta/models/gemini-2.5-flash-image:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": f"a red bicycle number {n}"}]}]},
        headers={"x-goog-api-key": key},
        timeout=120,
    ).status_code


def test_two_replicas_append_to_one_gap_free_ledger(db_url: str, tmp_path: Path) -> None:
    blob_store = "file:" + str(tmp_path / "shared-blobs") if is_sqlite(db_url) else "database"
    a = start_custody(tmp_path / "a", db_url, blob_store=blob_store)
    # The second replica shares the database, the blob store and the log key.
    b = start_custody(
        tmp_path / "b",
        db_url,
        blob_store=blob_store,
        log_key_file=tmp_path / "a" / "ledger-note.key",
    )
    try:
        jobs = [(a.base_url, a.keys["editor"], i) for i in range(TURNS_PER_REPLICA)]
        jobs += [(b.base_url, b.keys["editor"], i) for i in range(TURNS_PER_REPLICA)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda job: _turn(*job), jobs))
        assert codes == [200] * len(jobs)
        ledger = a.services.ledger  # type: ignore[attr-defined]
        size = ledger.size()
        indexes = [e.index for e in ledger.entries(0, size)]
        assert indexes == list(range(size)), "gap-free, one total order"
        turns = {e.event.turn for e in ledger.entries(0, size) if e.event.type == "turn.released"}
        assert len(turns) == len(jobs)
        ledger.issue_checkpoint()
        b.services.ledger.issue_checkpoint()  # type: ignore[attr-defined]
        report = verify_ledger(
            a.services.engine,  # type: ignore[attr-defined]
            origin=a.services.settings.log_origin,  # type: ignore[attr-defined]
            verifier=NoteVerifier.from_key_string(a.services.ledger_verifier_key),  # type: ignore[attr-defined]
            commitments=Commitments(a.services.engine, a.services.blobs),  # type: ignore[attr-defined]
        )
        assert report.commitments_checked > 0 and report.erased == 0
        assert report.ok, report.summary()
    finally:
        for running in (a, b):
            running.stop()
