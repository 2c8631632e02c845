"""Several processes appending to one ledger: one total order, no gap, no fork; crash safety.

Each process opens its own engine and ``Ledger`` (as gateway replicas do). Runs on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage.db import make_engine, migrate
from storage.ledger.events import LedgerEvent
from storage.ledger.log import Ledger, load_or_create_note_signer
from storage.ledger.verify import verify_ledger

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

ORIGIN = "test.custody.example/ledger"
PROCESSES, APPENDS = 4, 500
REPO = Path(__file__).resolve().parents[1]


def _append_many(url: str, key_path: str, worker: int, count: int) -> list[int]:
    """Runs in a spawned process: ``count`` single-event appends; returns their indexes."""
    engine = make_engine(url)
    signer = load_or_create_note_signer(Path(key_path), ORIGIN)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer, checkpoint_every_entries=200)
    indexes = []
    for i in range(count):
        (entry,) = ledger.append(
            [LedgerEvent("test.event", "acme", f"worker-{worker}", body={"w": worker, "i": i})]
        )
        indexes.append(entry.index)
        ledger.checkpoint_if_due()  # as each replica's background job: signers race
    ledger.close()
    engine.dispose()
    return indexes


def test_four_processes_get_one_gap_free_order(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    key_path = tmp_path / "ledger-note.key"
    signer = load_or_create_note_signer(key_path, ORIGIN)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(
            _append_many, [(db_url, str(key_path), w, APPENDS) for w in range(PROCESSES)]
        )
    total = PROCESSES * APPENDS
    assert sorted(i for r in results for i in r) == list(range(total))  # no gap, no duplicate
    engine = make_engine(db_url)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer)
    try:
        assert ledger.size() == total
        seen: dict[int, list[int]] = {}
        for entry in ledger.entries(0, total):
            seen.setdefault(entry.event.body["w"], []).append(entry.event.body["i"])
        # Each worker's events are all there, in the order it appended them.
        assert all(seen[w] == list(range(APPENDS)) for w in range(PROCESSES))
        ledger.issue_checkpoint()
    finally:
        ledger.close()
    report = verify_ledger(engine, origin=ORIGIN, verifier=signer.verifier())
    engine.dispose()
    assert report.ok, report.summary()
    assert report.entries == total
    # Four processes signed as they went (each sees the others' entries): none inconsistent.
    assert report.checkpoints >= PROCESSES * APPENDS // 200


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from storage.db import make_engine
    from storage.ledger.events import LedgerEvent
    from storage.ledger.log import Ledger, load_or_create_note_signer

    url, key, origin = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    ledger = Ledger.open(make_engine(url), origin=origin,
                         signer=load_or_create_note_signer(key, origin),
                         checkpoint_every_entries=50)
    n = 0
    while True:
        (entry,) = ledger.append([LedgerEvent("test.event", "acme", "writer", body={"n": n})])
        print(f"ack {entry.index} {n}", flush=True)
        ledger.checkpoint_if_due()
        n += 1
    """
)


def test_a_killed_writer_loses_no_acknowledged_entry(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    key_path = tmp_path / "ledger-note.key"
    signer = load_or_create_note_signer(key_path, ORIGIN)
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, db_url, str(key_path), ORIGIN],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    acked: dict[int, int] = {}
    assert child.stdout is not None
    deadline = time.monotonic() + 60
    while len(acked) < 300 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        _, index, n = line.split()
        acked[int(index)] = int(n)
    os.kill(child.pid, signal.SIGKILL)  # mid-append: the loop never pauses
    child.wait()
    assert len(acked) >= 300, "the writer did not get going"

    engine = make_engine(db_url)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer)
    try:
        size = ledger.size()
        assert size >= max(acked) + 1
        stored = {e.index: e.event.body["n"] for e in ledger.entries(0, size)}
        assert all(stored.get(index) == n for index, n in acked.items())
        # The log keeps going after the crash, and everything verifies.
        ledger.append([LedgerEvent("test.event", "acme", "after-crash", body={})])
        ledger.issue_checkpoint()
    finally:
        ledger.close()
    report = verify_ledger(engine, origin=ORIGIN, verifier=signer.verifier())
    engine.dispose()
    assert report.ok, report.summary()
