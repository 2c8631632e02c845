"""The compliance queries' main filters are answered from an index (migration 0010), on both DBs.

The database is migrated to head, filled with enough synthetic turns (and fresh statistics) that
a planner would rather scan the table than use a useless index, and each page query of
``governance.compliance.queries`` is EXPLAINed: the plan must name the filter's index and
must not scan the ``turns`` table whole. The latency at 10⁶ turns is measured in
``bench/query_bench.py``, not here (no timing assertions in tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql, sqlite

from bench.query_data import synthesise_turns
from governance.compliance.queries import (
    EventFilter,
    TurnFilter,
    events_page_query,
    turns_page_query,
)
from governance.ledger_vocabulary import EVENT_STAGES
from storage.db import make_engine, migrate
from tests.conftest import new_pg_database

TURN_FILTERS = {
    "ix_turns_q_tenant": TurnFilter(tenant="t1"),
    "ix_turns_q_actor": TurnFilter(tenant="t1", actor="actor-3@t1"),
    "ix_turns_q_session": TurnFilter(tenant="t1", session="ses_" + "17" * 12),  # Custody id
    "ix_turns_q_model": TurnFilter(tenant="t1", model="gemini-3-pro-image-preview"),
    "ix_turns_q_status": TurnFilter(tenant="t1", status="failed"),
    "ix_turns_q_outcome": TurnFilter(tenant="t1", outcome="POLICY_DENIED"),
}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One filled database per dialect for the module: every test only EXPLAINs queries on it."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('indexes') / 'q.db'}"
        else:
            url = stack.enter_context(new_pg_database())
        migrate(url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        synthesise_turns(engine, turns=20_000, tenants=4)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        yield engine


def _plan(engine: Engine, query: Any) -> str:
    dialect = postgresql.dialect() if engine.dialect.name == "postgresql" else sqlite.dialect()
    sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        rows = conn.execute(text(explain + sql)).all()
    return "\n".join(" ".join(str(c) for c in row) for row in rows)


@pytest.mark.parametrize("index", sorted(TURN_FILTERS))
def test_each_turn_filter_pages_from_its_index(filled, index) -> None:
    flt = TURN_FILTERS[index]
    for after in (None, [10**13, "zzzz"]):
        plan = _plan(filled, turns_page_query(flt, after=after, limit=51))
        assert index in plan, plan
        assert "SCAN turns\n" not in plan + "\n" and "Seq Scan on turns" not in plan, plan
        assert "TEMP B-TREE" not in plan, f"the page is sorted outside the index:\n{plan}"
    deny = _plan(
        filled, turns_page_query(TurnFilter(tenant="t1", policy="deny"), after=None, limit=51)
    )
    assert "ix_turns_q_outcome" in deny and "Seq Scan on turns" not in deny, deny
    timed = TurnFilter(tenant="t1", actor="actor-3@t1", since_ms=1, until_ms=10**13)
    assert "ix_turns_q_actor" in _plan(filled, turns_page_query(timed, after=None, limit=51))


def test_event_pages_come_from_the_ledger_index(filled) -> None:
    for flt, index in (
        (EventFilter(tenant="t1"), "ix_ledger_entries_q_tenant"),
        (EventFilter(tenant="t1", type="policy.decided"), "ix_ledger_entries_q_type"),
    ):
        plan = _plan(filled, events_page_query(flt, after=None, limit=51))
        # Where a tenant holds a quarter of the log, walking the primary key backwards and
        # filtering is as good a plan (51 rows come within ~200): either index is an index.
        assert index in plan or "ledger_entries_pkey" in plan or "PRIMARY KEY" in plan, plan
        assert "Seq Scan on ledger_entries" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def _sorts_outside_an_index(plan: str) -> bool:
    return "TEMP B-TREE" in plan or "Sort Key" in plan


@pytest.mark.parametrize("label", ["campaign=c-3", "@version=final"])
def test_a_label_pages_from_its_index(filled, label) -> None:
    """``label=``: the page is a walk of ``ix_turn_labels_q`` (migration 0014) joined to each turn
    by key, on a first page and after a cursor. For a common label (5 % of a tenant's turns) the
    walk is ordered, with no sort step; for a rare one (2 %) a planner may rather fetch all of
    its rows from the same index and sort them, which costs the label's size, not the table's."""
    for after in (None, [10**13, "zzzz"]):
        flt = TurnFilter(tenant="t1", label=label)
        plan = _plan(filled, turns_page_query(flt, after=after, limit=51))
        assert "ix_turn_labels_q" in plan, plan
        assert "Seq Scan" not in plan and "SCAN turn" not in plan, plan
        if label.startswith("campaign"):
            assert not _sorts_outside_an_index(plan), plan


def test_events_by_label_come_from_the_ledger_and_label_indexes(filled) -> None:
    """Events by label: SQLite walks the tenant's ledger index backwards and probes each event's
    turn in ``turn_labels``' key, with no sort. PostgreSQL may instead collect the label's turns
    from ``ix_turn_labels_q`` and sort their events (a set the size of the label, not the log)."""
    flt = EventFilter(tenant="t1", label="campaign=c-3")
    plan = _plan(filled, events_page_query(flt, after=None, limit=51))
    assert "turn_labels" in plan and "Seq Scan" not in plan, plan
    assert "SCAN ledger_entries" not in plan and "TEMP B-TREE" not in plan, plan
    if "Sort Key" in plan:
        assert "ix_turn_labels_q" in plan, plan


def test_an_event_stage_pages_each_of_its_types_from_the_type_index(filled) -> None:
    """``stage=``: one ``ix_ledger_entries_q_type`` walk per type; the merge sorts at most
    types × limit rows, never the tenant's log (no scan of ``ledger_entries``)."""
    for stage in ("receive", "release", "review"):
        plan = _plan(filled, events_page_query(EventFilter(tenant="t1", stage=stage), after=None,
                                               limit=51))  # fmt: skip
        # A type holding a third of the tenant's log may walk the primary key backwards
        # instead (as the tenant-only page may): still one bounded walk per type.
        walks = sum(plan.count(i) for i in ("ix_ledger_entries_q_type", "ledger_entries_pkey"))
        assert walks == len(EVENT_STAGES[stage]), plan
        assert "Seq Scan" not in plan and "SCAN ledger_entries\n" not in plan + "\n", plan
