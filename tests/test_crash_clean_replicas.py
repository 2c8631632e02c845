"""``kill -9`` of one of two replicas under a 16-client load loses nothing either acknowledged.

``tests/test_crash_clean.py`` kills the one ``custody serve`` of a database; here two real
``custody serve`` subprocesses share one database (on PostgreSQL also the blob store, on SQLite a
blob directory) and each round ``bench.soak.check_round`` checks the one that was killed and
restarted. Apart from ``tests/test_crash_clean.py`` so that two pytest-xdist workers share the
minutes these soaks take (each file runs on one worker).
"""

from __future__ import annotations

from pathlib import Path

from bench.soak import soak_replicas


def test_kill_9_of_one_of_two_replicas_under_load_loses_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """Two replicas on one database, a 16-client load split between them; each round one of
    them is killed (alternately) and restarted: everything either acknowledged is recorded."""
    reports = soak_replicas(db_url, tmp_path, rounds=2, clients=16, load_s=(1.5, 3.0))
    for report in reports:
        assert report.verify_ok and not report.problems, report.line()
    assert sum(r.acknowledged for r in reports) > 0, "the load must get responses through"
    assert sum(r.interrupted for r in reports) > 0, "a kill under load must interrupt turns"
