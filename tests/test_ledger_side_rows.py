"""Rows committed with an append are all-or-nothing with it, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from storage.ledger.events import SideRows
from tests.ledger_helpers import event, open_ledger

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


def _count(ledger, sql: str) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def test_side_rows_commit_with_the_events(db_url: str, tmp_path: Path) -> None:
    ledger, _ = open_ledger(db_url, tmp_path)
    side = SideRows(
        "decision_inputs",
        ("turn_id", "stage", "input_commitment", "created_ms"),
        [("turn-1", "request", "c1", 1), ("turn-1", "response", "c2", 2)],
    )
    entries = ledger.append([event(1), event(2)], [side])
    assert [e.index for e in entries] == [0, 1]
    assert _count(ledger, "SELECT count(*) FROM decision_inputs WHERE turn_id = 'turn-1'") == 2
    ledger.close()


def test_a_failing_side_row_leaves_neither_events_nor_rows(db_url: str, tmp_path: Path) -> None:
    ledger, _ = open_ledger(db_url, tmp_path)
    ledger.append([event(0)])
    good = SideRows(
        "decision_inputs",
        ("turn_id", "stage", "input_commitment", "created_ms"),
        [("turn-2", "request", "c1", 1)],
    )
    bad = SideRows("no_such_table", ("x",), [(1,)])
    with pytest.raises(Exception, match="no_such_table"):
        ledger.append([event(1)], [good, bad])
    assert ledger.size() == 1
    assert _count(ledger, "SELECT count(*) FROM decision_inputs") == 0
    assert [e.index for e in ledger.append([event(2)])] == [1], "the log goes on, gap-free"
    ledger.close()
