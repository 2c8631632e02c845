"""Deadlines and processes: the background job rejects or escalates a late task, and a task
opened through one gateway process is decided through another while the first one waits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from governance.review import ReviewTask, desk_for
from storage.db import is_sqlite
from storage.schema.reviews import REVIEW_TASKS
from tests.conftest import RunningCustody, start_custody
from tests.review_helpers import add_member, api, decide, open_task, reason_of

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


def _until(custody: RunningCustody, task: ReviewTask, status: str) -> dict[str, Any]:
    """Poll the API until the task has ``status`` (the job runs every half second) and, for an
    outcome, its event's ledger index: the desk changes the status first and records the
    outcome's index once that event is appended (the desk module's docstring), so a poll
    between the two sees the status without the index."""
    for _ in range(200):
        resp = api(custody, custody.keys["reviewer"], "GET", f"/api/v1/reviews/{task.task_id}")
        review: dict[str, Any] = resp.json()["review"]
        recorded = status == "escalated" or review["outcome_index"] is not None
        if review["status"] == status and recorded:
            return review
        time.sleep(0.1)
    raise AssertionError(f"task {task.task_id} never became {status}: {review}")


def test_a_late_task_is_rejected_at_its_deadline(db_url: str, tmp_path: Path) -> None:
    custody = start_custody(tmp_path / "custody", db_url)
    try:
        add_member(custody, "reviewers", "reviewer@acme")
        task = open_task(custody, review_deadline_s=1)
        review = _until(custody, task, "expired")
        assert review["reason"] == "No decision was taken before the review deadline."
        assert review["outcome_index"] is not None
        late = decide(custody, custody.keys["reviewer"], task)
        assert late.status_code == 409 and reason_of(late) == "REVIEW_CLOSED"
        events = [e for e in custody.ledger_events(task.turn_id) if e["type"] == "review.expired"]
        assert len(events) == 1 and events[0]["actor"] == "custody"
    finally:
        custody.stop()


def _due_now(custody: RunningCustody, task: ReviewTask) -> None:
    """Move the task's deadline into the past (the job then acts on it at its next tick)."""
    with custody.services.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            update(REVIEW_TASKS).where(REVIEW_TASKS.c.task_id == task.task_id).values(deadline_ms=1)
        )


def test_a_late_task_escalates_once_then_is_decided_by_the_other_group(
    db_url: str, tmp_path: Path
) -> None:
    custody = start_custody(tmp_path / "custody", db_url)
    try:
        add_member(custody, "reviewers", "reviewer@acme")
        task = open_task(
            custody, review_deadline_s=3600, on_deadline="escalate", escalate_to="acme-legal"
        )
        _due_now(custody, task)
        review = _until(custody, task, "escalated")
        assert review["group"] == "acme-legal" and review["round"] == 1
        assert review["on_deadline"] == "reject" and review["escalate_to"] is None
        assert review["deadline_ms"] > task.created_ms  # a fresh deadline, a full period away
        wrong = decide(custody, custody.keys["reviewer"], task)
        assert wrong.status_code == 403 and reason_of(wrong) == "NOT_IN_GROUP"
        add_member(custody, "acme-legal", "reviewer@acme")
        done = decide(custody, custody.keys["reviewer"], task)
        assert done.json()["review"]["status"] == "approved", done.text
        types = [e["type"] for e in custody.ledger_events(task.turn_id)]
        assert types.count("review.escalated") == 1
        assert types[-1] == "review.approved"
        # An escalated task that nobody decides is rejected at its second deadline.
        other = open_task(
            custody, review_deadline_s=3600, on_deadline="escalate", escalate_to="acme-legal"
        )
        _due_now(custody, other)
        _until(custody, other, "escalated")
        _due_now(custody, other)
        assert _until(custody, other, "expired")["round"] == 1
    finally:
        custody.stop()


def test_a_task_opened_on_one_process_is_decided_on_another_while_the_first_waits(
    db_url: str, tmp_path: Path
) -> None:
    blob_store = "file:" + str(tmp_path / "shared-blobs") if is_sqlite(db_url) else "database"
    a = start_custody(tmp_path / "a", db_url, blob_store=blob_store)
    b = start_custody(
        tmp_path / "b",
        db_url,
        blob_store=blob_store,
        log_key_file=tmp_path / "a" / "ledger-note.key",
    )
    try:
        add_member(a, "reviewers", "reviewer@acme")
        task = open_task(a)
        desk = desk_for(a.services)  # type: ignore[arg-type]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(asyncio.run, desk.wait(task.task_id, timeout_s=60))
            quick = asyncio.run(desk.wait(task.task_id, timeout_s=0))
            assert quick.status == "pending" and not waiting.done()
            resp = decide(b, b.keys["reviewer"], task)  # B's key, B's process
            assert resp.status_code == 200, resp.text
            settled = waiting.result(timeout=60)
        assert settled.status == "approved" and settled.settled
        assert [a.credit for a in settled.approvals_for_manifest()] == ["reviewer@acme"]
        entry = a.services.ledger.entry(settled.outcome_index)  # type: ignore[attr-defined]
        assert entry.event.type == "review.approved"
        again = desk.find_by_request_hash("acme", task.request_hash)
        assert again is not None and again.task_id == task.task_id
        assert desk.find_by_request_hash("globex", task.request_hash) is None
    finally:
        b.stop()
        a.stop()


def test_an_outcome_whose_event_was_never_appended_is_recorded_late(
    db_url: str, tmp_path: Path
) -> None:
    """A process that died between closing a task and appending its outcome leaves the task
    held (not settled); the review job appends the missing event."""
    custody = start_custody(tmp_path / "custody", db_url)
    try:
        task = open_task(custody)
        desk = desk_for(custody.services)  # type: ignore[arg-type]
        with custody.services.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(
                update(REVIEW_TASKS)
                .where(REVIEW_TASKS.c.task_id == task.task_id)
                .values(status="rejected", decided_ms=1, reason="crashed before its event")
            )
        assert not desk.get(task.task_id).settled  # type: ignore[union-attr]
        for _ in range(100):
            settled = desk.get(task.task_id)
            if settled is not None and settled.settled:
                break
            time.sleep(0.1)
        assert settled is not None and settled.settled
        late = [e for e in custody.ledger_events(task.turn_id) if e["type"] == "review.rejected"]
        assert len(late) == 1 and late[0]["body"]["recorded_late"] is True  # type: ignore[index]
    finally:
        custody.stop()
