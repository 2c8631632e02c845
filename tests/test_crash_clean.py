"""``kill -9`` under a 16-client load leaves a ledger that verifies, with nothing lost or open.

A real ``custody serve`` subprocess on each database, 16 client threads posting real edits,
``kill -9`` at a random moment, restart, two rounds (``make soak`` runs five, longer, and prints
the figures). After each round ``bench.soak.check_round`` asserts: ``custody ledger verify``
passes, every turn the dead process left is a ``turn.interrupted`` event and an ``interrupted``
``turns`` row, and every response a client received has ``turn.released`` and an
``output.signed`` for each image it got (same SHA-256). Two replicas, one of them killed:
``tests/test_crash_clean_replicas.py`` (a file of its own so that another worker runs it).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.soak import soak
from storage.ledger import LedgerEvent
from storage.ledger.verify import verify_ledger
from tests.conftest import RunningCustody, start_custody


def test_kill_9_under_load_leaves_a_clean_complete_ledger(db_url: str, tmp_path: Path) -> None:
    reports = soak(db_url, tmp_path / "data", rounds=2, clients=16, load_s=(1.5, 3.5))
    for report in reports:
        assert report.verify_ok and not report.problems, report.line()
    assert sum(r.acknowledged for r in reports) > 0, "the load must get responses through"
    assert sum(r.interrupted for r in reports) > 0, "a kill under load must interrupt turns"


def _open_turn(gateway: RunningCustody, turn_id: str, process: dict[str, object]) -> None:
    """A ``turn.received`` with no closing event, as a process leaves when it dies mid-turn."""
    body = {"model": "gemini-2.5-flash-image", "api_version": "v1beta", "images": []}
    event = LedgerEvent(
        type="turn.received",
        tenant="acme",
        actor="editor@acme",
        turn=turn_id,
        body={**body, "method": "generateContent", "process": process},
    )
    gateway.services.ledger.append([event])  # type: ignore[attr-defined]


@pytest.mark.pg_at_head
def test_start_up_closes_only_turns_whose_process_is_really_gone(
    db_url: str, tmp_path: Path
) -> None:
    """Replicas share the database: a turn of a live process (or of another host, recently)
    stays open; a turn of a process of this host that no longer runs is recorded as
    interrupted, with its turns row, and the ledger still verifies."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    host = socket.gethostname()
    try:
        first = start_custody(tmp_path / "custody", db_url)
        try:
            assert first.services.interrupted == []  # type: ignore[attr-defined]
            _open_turn(first, "t_gone", {"host": host, "pid": gone.pid, "instance": "a1"})
            _open_turn(first, "t_alive", {"host": host, "pid": alive.pid, "instance": "b2"})
            _open_turn(first, "t_far", {"host": "replica-2.internal", "pid": 1, "instance": "c3"})
        finally:
            first.stop()
        second = start_custody(tmp_path / "custody", db_url)
        try:
            services = second.services
            assert services.interrupted == ["t_gone"]  # type: ignore[attr-defined]
            (event,) = second.ledger_events("t_gone")[1:]
            assert event["type"] == "turn.interrupted"
            assert event["body"]["reason"] == "process_gone"  # type: ignore[index]
            assert event["body"]["last_event"] == "turn.received"  # type: ignore[index]
            with services.engine.connect() as conn:  # type: ignore[attr-defined]
                status = conn.execute(
                    text("SELECT status FROM turns WHERE turn_id = 't_gone'")
                ).scalar_one()
            assert status == "interrupted"
            assert [e["type"] for e in second.ledger_events("t_alive")] == ["turn.received"]
            assert [e["type"] for e in second.ledger_events("t_far")] == ["turn.received"]
            report = verify_ledger(
                services.engine,  # type: ignore[attr-defined]
                origin=services.ledger.origin,  # type: ignore[attr-defined]
                verifier=services.ledger.signer.verifier(),  # type: ignore[attr-defined]
            )
            assert report.ok, report.summary()
            assert report.turns_checked == 1
        finally:
            second.stop()
    finally:
        alive.kill()
        alive.wait()
