"""The review API on a real server, on SQLite and PostgreSQL: queue, claims, decisions, the rules
of separation of duties, the shown-digest binding, and that every step and refusal is recorded."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest

from governance.auth.keys import create_key
from governance.review import desk_for, shown_digest
from tests.conftest import RunningCustody, start_custody
from tests.review_helpers import add_member, api, decide, open_task, reason_of

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


@pytest.fixture()
def custody(db_url: str, tmp_path: Path) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path / "custody", db_url)
    engine = running.services.engine  # type: ignore[attr-defined]
    for actor in ("reviewer2@acme", "outsider@acme"):
        running.keys[actor] = create_key(engine, tenant="acme", actor=actor, roles=["reviewer"])
    running.keys["reviewer@globex"] = create_key(
        engine, tenant="globex", actor="reviewer@globex", roles=["reviewer"]
    )
    running.keys["operator"] = create_key(
        engine, tenant="custody", actor="ops@custody", roles=["operator"]
    )
    # The requester also holds the reviewer role on a second key: the rule is by actor.
    running.keys["editor-as-reviewer"] = create_key(
        engine, tenant="acme", actor="editor@acme", roles=["reviewer"]
    )
    for actor in ("reviewer@acme", "reviewer2@acme", "editor@acme"):
        add_member(running, "reviewers", actor)
    try:
        yield running
    finally:
        running.stop()


def _types(custody: RunningCustody, turn: str) -> list[str]:
    return [str(e["type"]) for e in custody.ledger_events(turn)]


def test_two_distinct_approvals_approve_and_each_step_is_recorded(custody: RunningCustody) -> None:
    task = open_task(custody, approvals_required=2)
    first = decide(custody, custody.keys["reviewer"], task)
    assert first.status_code == 200, first.text
    assert first.json()["review"]["status"] == "pending"
    assert first.json()["review"]["approvals"] == 1
    again = decide(custody, custody.keys["reviewer"], task)
    assert again.status_code == 409 and reason_of(again) == "ALREADY_DECIDED"
    second = decide(custody, custody.keys["reviewer2@acme"], task, comment="")
    assert second.status_code == 200, second.text
    review = second.json()["review"]
    assert review["status"] == "approved" and review["outcome_index"] is not None
    assert [d["reviewer"] for d in review["decisions"]] == ["reviewer@acme", "reviewer2@acme"]
    assert all(d["shown_digest"] == task.shown_digest for d in review["decisions"])
    assert _types(custody, task.turn_id) == [
        "review.opened",
        "review.decided",
        "review.decided",
        "review.approved",
    ]
    decided = [e for e in custody.ledger_events(task.turn_id) if e["type"] == "review.decided"]
    assert decided[0]["body"]["comment"].startswith("salted-sha256:")  # type: ignore[index]
    assert "looks right" not in str(decided)  # the comment is in the blob store, not the leaf
    settled = desk_for(custody.services).get(task.task_id)  # type: ignore[arg-type]
    assert settled is not None and settled.settled
    credits = [a.credit for a in settled.approvals_for_manifest()]
    assert credits == ["reviewer@acme", "reviewer2@acme"]  # reviewer_identity "name"


def test_the_requester_never_decides_their_own_turn(custody: RunningCustody) -> None:
    task = open_task(custody, requester="editor@acme")
    resp = decide(custody, custody.keys["editor-as-reviewer"], task)
    assert resp.status_code == 403 and reason_of(resp) == "OWN_TURN"
    refused = [e for e in custody.ledger_events() if e["type"] == "review.refused"]
    assert refused[-1]["body"]["reason"] == "OWN_TURN"  # type: ignore[index]
    assert refused[-1]["actor"] == "editor@acme"


def test_a_reviewer_outside_the_group_and_other_roles_cannot_decide(
    custody: RunningCustody,
) -> None:
    task = open_task(custody)
    resp = decide(custody, custody.keys["outsider@acme"], task)
    assert resp.status_code == 403 and reason_of(resp) == "NOT_IN_GROUP"
    for role in ("auditor", "editor", "operator"):
        resp = decide(custody, custody.keys[role], task)
        assert resp.status_code == 403 and reason_of(resp) == "ROLE_REQUIRED", role
    other = decide(custody, custody.keys["reviewer@globex"], task)
    assert other.status_code == 404 and reason_of(other) == "REVIEW_NOT_FOUND"
    reasons = [
        e["body"]["reason"] for e in custody.ledger_events() if e["type"] == "review.refused"
    ]  # type: ignore[index]
    assert reasons == [
        "NOT_IN_GROUP",
        "ROLE_REQUIRED",
        "ROLE_REQUIRED",
        "ROLE_REQUIRED",
        "REVIEW_NOT_FOUND",
    ]


def test_a_decision_on_other_content_is_refused(custody: RunningCustody) -> None:
    task = open_task(custody)
    resp = decide(custody, custody.keys["reviewer"], task, shown_digest="0" * 64)
    assert resp.status_code == 409 and reason_of(resp) == "SHOWN_MISMATCH"
    other = open_task(custody)
    moved = decide(custody, custody.keys["reviewer"], task, shown_digest=other.shown_digest)
    assert moved.status_code == 409 and reason_of(moved) == "SHOWN_MISMATCH"
    shown = api(custody, custody.keys["reviewer"], "GET", f"/api/v1/reviews/{task.task_id}")
    assert shown.json()["review"]["status"] == "pending"
    assert shown_digest(shown.json()["review"]["shown"]) == task.shown_digest


def test_one_reject_rejects_and_request_changes_closes(custody: RunningCustody) -> None:
    task = open_task(custody, approvals_required=2)
    decide(custody, custody.keys["reviewer"], task)
    no_reason = decide(custody, custody.keys["reviewer2@acme"], task, "reject", comment=" ")
    assert no_reason.status_code == 400 and reason_of(no_reason) == "COMMENT_REQUIRED"
    resp = decide(custody, custody.keys["reviewer2@acme"], task, "reject", "not licensed")
    assert resp.json()["review"]["status"] == "rejected"
    assert resp.json()["review"]["reason"] == "not licensed"
    late = decide(custody, custody.keys["editor-as-reviewer"], task)
    assert late.status_code == 403  # still the requester, whatever the state
    changes = open_task(custody)
    resp = decide(custody, custody.keys["reviewer"], changes, "request_changes", "crop it")
    assert resp.json()["review"]["status"] == "changes_requested"
    assert _types(custody, changes.turn_id)[-1] == "review.changes_requested"
    bad = decide(custody, custody.keys["reviewer2@acme"], open_task(custody), "maybe")
    assert bad.status_code == 400 and reason_of(bad) == "BAD_DECISION"


def test_a_claim_keeps_other_reviewers_off_until_the_claimant_decides(
    custody: RunningCustody,
) -> None:
    task = open_task(custody, approvals_required=2)
    path = f"/api/v1/reviews/{task.task_id}/claim"
    claimed = api(custody, custody.keys["reviewer"], "POST", path, json={"minutes": 5})
    assert claimed.status_code == 200 and claimed.json()["review"]["claimed_by"] == "reviewer@acme"
    clash = api(custody, custody.keys["reviewer2@acme"], "POST", path, json={})
    assert clash.status_code == 409 and reason_of(clash) == "REVIEW_CLAIMED"
    blocked = decide(custody, custody.keys["reviewer2@acme"], task)
    assert blocked.status_code == 409 and reason_of(blocked) == "REVIEW_CLAIMED"
    assert decide(custody, custody.keys["reviewer"], task).status_code == 200
    assert api(custody, custody.keys["reviewer2@acme"], "POST", path, json={}).status_code == 200
    assert "review.claimed" in _types(custody, task.turn_id)
    bad = api(custody, custody.keys["reviewer2@acme"], "POST", path, json={"minutes": "x"})
    assert bad.status_code == 400 and reason_of(bad) == "BAD_REVIEW_REQUEST"


def test_the_queue_is_tenant_scoped_and_filterable(custody: RunningCustody) -> None:
    mine = open_task(custody, stage="response")
    open_task(custody, stage="request")
    theirs = open_task(custody, tenant="globex", requester="editor@globex")

    def queue(key: str, **params: object) -> list[str]:
        resp = api(custody, custody.keys[key], "GET", "/api/v1/reviews", params=params)
        assert resp.status_code == 200, resp.text
        return [r["id"] for r in resp.json()["reviews"]]

    assert theirs.task_id not in queue("reviewer")
    assert len(queue("auditor")) == 2  # auditors read the queue
    assert queue("reviewer", stage="response") == [mine.task_id]
    assert queue("reviewer", group="nobody") == []
    assert len(queue("reviewer", requester="editor@acme")) == 2
    assert queue("reviewer", due_before_ms=1) == []
    assert len(queue("operator")) == 3 and queue("operator", tenant="globex") == [theirs.task_id]
    assert queue("reviewer@globex") == [theirs.task_id]
    editor = api(custody, custody.keys["editor"], "GET", "/api/v1/reviews")
    assert editor.status_code == 403
    hidden = api(custody, custody.keys["reviewer"], "GET", f"/api/v1/reviews/{theirs.task_id}")
    assert hidden.status_code == 404
    wall = api(
        custody, custody.keys["reviewer"], "GET", "/api/v1/reviews", params={"tenant": "globex"}
    )
    assert wall.status_code == 403


def test_a_turns_status_and_trail(custody: RunningCustody) -> None:
    task = open_task(custody)
    path = f"/api/v1/turns/{task.turn_id}"
    held = api(custody, custody.keys["reviewer"], "GET", path)
    assert held.status_code == 200 and held.json()["status"] == "held"
    decide(custody, custody.keys["reviewer"], task, "reject", "no consent on file")
    after = api(custody, custody.keys["auditor"], "GET", path).json()
    assert after["status"] == "rejected"
    assert after["reviews"][0]["reason"] == "no consent on file"
    assert [e["type"] for e in after["events"]][-1] == "review.rejected"
    other_editor = create_key(
        custody.services.engine,
        tenant="acme",
        actor="someone@acme",
        roles=["editor"],  # type: ignore[attr-defined]
    )
    assert api(custody, other_editor, "GET", path).status_code == 404
    assert api(custody, custody.keys["other-tenant-editor"], "GET", path).status_code == 404


def test_concurrent_decisions_close_a_task_exactly_once(custody: RunningCustody) -> None:
    engine = custody.services.engine  # type: ignore[attr-defined]
    keys = []
    for n in range(4):
        actor = f"crowd{n}@acme"
        keys.append(create_key(engine, tenant="acme", actor=actor, roles=["reviewer"]))
        add_member(custody, "reviewers", actor)
    task = open_task(custody, approvals_required=2)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda key: decide(custody, key, task), keys))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 409, 409], [a.text for a in answers]
    assert {reason_of(a) for a in answers if a.status_code == 409} == {"REVIEW_CLOSED"}
    types = _types(custody, task.turn_id)
    assert types.count("review.decided") == 2 and types.count("review.approved") == 1
