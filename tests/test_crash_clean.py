"""``kill -9`` under a 16-client load leaves a ledger that verifies, with nothing lost or open.

A real ``custody serve`` subprocess on each database, 16 client threads posting real edits,
``kill -9`` at a random moment, restart, two rounds (``make soak`` runs five, longer, and prints
the figures). After each round ``bench.soak.check_round`` asserts: ``custody ledger verify``
passes, every turn the dead process left is a ``turn.interrupted`` event and an ``interrupted``
``turns`` row, and every response a client received has ``turn.released`` and an
``output.signed`` for each image it got (same SHA-256).
"""

from __future__ import annotations

from pathlib import Path

from bench.soak import soak


def test_kill_9_under_load_leaves_a_clean_complete_ledger(db_url: str, tmp_path: Path) -> None:
    reports = soak(db_url, tmp_path / "data", rounds=2, clients=16, load_s=(1.5, 3.5))
    for report in reports:
        assert report.verify_ok and not report.problems, report.line()
    assert sum(r.acknowledged for r in reports) > 0, "the load must get responses through"
    assert sum(r.interrupted for r in reports) > 0, "a kill under load must interrupt turns"
