"""The console's review queue and task pages through a real gateway, as a browser without
JavaScript uses them, on SQLite and PostgreSQL: the queue's filters and order, the task page's
content and images, decisions through the same desk as the native API, and every refusal shown
with its status and recorded as ``review.refused``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from governance.console.sessions import ConsoleSessions
from governance.console.web import COOKIE
from tests.conftest import RunningCustody, start_custody
from tests.console_helpers import ConsoleClient, console_events, csrf_of, make_account
from tests.console_review_helpers import PROMPT, make_reviewer, mask_for, open_shown_task
from tests.review_helpers import api

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


@pytest.fixture()
def served(tmp_path: Path, db_url: str) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path / "custody", db_url)
    try:
        yield running
    finally:
        running.stop()


def _client(running: RunningCustody, username: str, tenant: str = "acme") -> ConsoleClient:
    client = ConsoleClient(running)
    assert client.sign_in(username, tenant=tenant).status_code == 303
    return client


def _decide(
    client: ConsoleClient, task_id: str, decision: str, comment: str = "", digest: str = ""
) -> httpx.Response:
    page = client.get(f"/console/reviews/{task_id}")
    assert page.status_code == 200, page.text[:500]
    shown = re.search(r'name="shown_digest" value="([0-9a-f]{64})"', page.text)
    assert shown or digest, "the page carries the task's shown digest"
    return client.http.post(
        f"/console/reviews/{task_id}/decision",
        data={
            "csrf": csrf_of(page),
            "decision": decision,
            "comment": comment,
            "shown_digest": digest or shown.group(1),  # type: ignore[union-attr]
        },
    )


def _refusals(running: RunningCustody) -> list[dict[str, object]]:
    return [e["body"] for e in console_events(running, "review.refused")]  # type: ignore[misc]


def test_approve_from_the_task_page(served, photo_bytes) -> None:
    photo = photo_bytes["sample1.png"]
    task = open_shown_task(served, photo, reviewer_group="brand")
    make_reviewer(served, "rita")
    rita = _client(served, "rita")
    queue = rita.get("/console/reviews")
    assert queue.status_code == 200
    assert task.task_id in queue.text and "yours" in queue.text
    assert re.search(r"<strong>in \d+ (d|h|min)[^<]*</strong>", queue.text), "due relative"
    assert "UTC" in queue.text, "and absolute"

    page = rita.get(f"/console/reviews/{task.task_id}")
    assert PROMPT in page.text and "an identifiable person is edited" in page.text
    assert 'class="overlay"' in page.text and "1 of 1" not in page.text
    images = re.findall(r'src="(/console/reviews/[0-9a-f]+/content/\w+/\d)"', page.text)
    assert {i.rsplit("/", 2)[1] for i in images} == {"inputs", "masks", "outputs"}
    for path in set(images):
        blob = rita.get(path)
        assert blob.status_code == 200 and blob.headers["content-type"] == "image/png"
        assert blob.content in (photo, mask_for(photo))
        assert blob.headers["x-content-type-options"] == "nosniff"
    assert rita.get(f"/console/reviews/{task.task_id}/content/inputs/7").status_code == 404

    claimed = rita.post_form(f"/console/reviews/{task.task_id}/claim")
    assert claimed.status_code == 303
    assert "claimed" in rita.get(claimed.headers["location"]).text
    done = _decide(rita, task.task_id, "approve", "fine for release")
    assert done.status_code == 303, done.text[:500]
    after = rita.get(done.headers["location"])
    assert "Your approval is recorded" in after.text
    review = api(served, served.keys["reviewer"], "GET", f"/api/v1/reviews/{task.task_id}")
    doc = review.json()["review"]
    assert doc["status"] == "approved" and doc["outcome_index"] is not None
    assert [d["reviewer"] for d in doc["decisions"]] == ["rita"]
    assert doc["decisions"][0]["shown_digest"] == task.shown_digest
    types = [e["type"] for e in served.ledger_events(task.turn_id)]
    assert types == ["review.opened", "review.claimed", "review.decided", "review.approved"]
    assert task.task_id not in rita.get("/console/reviews").text  # no longer open
    assert task.task_id in rita.get("/console/reviews", params={"status": "approved"}).text
    rita.close()


def test_refusals_are_shown_with_their_status_and_recorded(served, photo_bytes) -> None:
    photo = photo_bytes["sample1.png"]
    task = open_shown_task(served, photo, requester="pat", reviewer_group="brand")
    make_reviewer(served, "pat")  # the requester, by actor, though a reviewer of the group
    make_reviewer(served, "quinn")
    make_reviewer(served, "olga", group="legal")
    cases = [
        ("pat", "approve", "", None, 403, "OWN_TURN"),
        ("olga", "approve", "", None, 403, "NOT_IN_GROUP"),
        ("quinn", "approve", "", "ab" * 32, 409, "SHOWN_MISMATCH"),
        ("quinn", "reject", "", None, 400, "COMMENT_REQUIRED"),
    ]
    for who, decision, comment, digest, status, reason in cases:
        client = _client(served, who)
        page = client.get(f"/console/reviews/{task.task_id}")
        if who == "pat":
            assert "You requested this turn" in page.text
        resp = _decide(client, task.task_id, decision, comment, digest or "")
        assert resp.status_code == status, (who, resp.text[:400])
        assert reason in resp.text and "refused" in resp.text
        client.close()
    quinn = _client(served, "quinn")
    assert quinn.post_form(f"/console/reviews/{task.task_id}/claim").status_code == 303
    olga_in_brand = "olga2"
    make_reviewer(served, olga_in_brand)
    other = _client(served, olga_in_brand)
    assert "REVIEW_CLAIMED" in other.post_form(f"/console/reviews/{task.task_id}/claim").text
    assert _decide(quinn, task.task_id, "reject", "the face is recognisable").status_code == 303
    again = _decide(quinn, task.task_id, "approve", digest=task.shown_digest)
    assert again.status_code == 409 and "REVIEW_CLOSED" in again.text
    recorded = [(b["action"], b["reason"]) for b in _refusals(served)]
    for expected in (
        ("decide", "OWN_TURN"),
        ("decide", "NOT_IN_GROUP"),
        ("decide", "SHOWN_MISMATCH"),
        ("decide", "COMMENT_REQUIRED"),
        ("claim", "REVIEW_CLAIMED"),
        ("decide", "REVIEW_CLOSED"),
    ):
        assert expected in recorded, (expected, recorded)
    doc = api(served, served.keys["reviewer"], "GET", f"/api/v1/reviews/{task.task_id}").json()
    assert doc["review"]["status"] == "rejected"
    assert doc["review"]["reason"] == "the face is recognisable"
    quinn.close()
    other.close()


def test_two_approvals_where_the_task_asks_for_two(served, photo_bytes) -> None:
    task = open_shown_task(served, photo_bytes["sample1.png"], approvals_required=2)
    make_reviewer(served, "ann", group="reviewers")
    make_reviewer(served, "ben", group="reviewers")
    ann, ben = _client(served, "ann"), _client(served, "ben")
    assert _decide(ann, task.task_id, "approve").status_code == 303
    page = ann.get(f"/console/reviews/{task.task_id}")
    assert "1 of 2 needed" in page.text and "pending" in page.text
    assert "already decided" in page.text
    twice = _decide(ann, task.task_id, "approve")
    assert twice.status_code == 409 and "ALREADY_DECIDED" in twice.text
    assert _decide(ben, task.task_id, "approve").status_code == 303
    assert "approved" in ben.get(f"/console/reviews/{task.task_id}").text
    doc = api(served, served.keys["reviewer"], "GET", f"/api/v1/reviews/{task.task_id}").json()
    assert doc["review"]["status"] == "approved" and doc["review"]["approvals"] == 2
    ann.close()
    ben.close()


def test_an_auditor_reads_but_cannot_decide(served, photo_bytes) -> None:
    task = open_shown_task(served, photo_bytes["sample1.png"])
    make_account(served, "audrey", "auditor")
    audrey = _client(served, "audrey")
    assert task.task_id in audrey.get("/console/reviews").text
    page = audrey.get(f"/console/reviews/{task.task_id}")
    assert page.status_code == 200 and 'id="read-only"' in page.text
    assert "decision-form" not in page.text and "shown_digest" not in page.text
    forged = audrey.http.post(
        f"/console/reviews/{task.task_id}/decision",
        data={"csrf": csrf_of(page), "decision": "approve", "shown_digest": task.shown_digest},
    )
    assert forged.status_code == 403 and "ROLE_REQUIRED" in forged.text
    assert ("decide", "ROLE_REQUIRED") in [(b["action"], b["reason"]) for b in _refusals(served)]
    doc = api(served, served.keys["reviewer"], "GET", f"/api/v1/reviews/{task.task_id}").json()
    assert doc["review"]["status"] == "pending" and doc["review"]["decisions"] == []
    audrey.close()


def test_a_post_without_the_csrf_token_does_nothing(served, photo_bytes) -> None:
    task = open_shown_task(served, photo_bytes["sample1.png"])
    make_reviewer(served, "rita", group="reviewers")
    rita = _client(served, "rita")
    resp = rita.http.post(
        f"/console/reviews/{task.task_id}/decision",
        data={"csrf": "forged", "decision": "approve", "shown_digest": task.shown_digest},
    )
    assert resp.status_code == 403 and "CSRF_TOKEN_INVALID" in resp.text
    doc = api(served, served.keys["reviewer"], "GET", f"/api/v1/reviews/{task.task_id}").json()
    assert doc["review"]["decisions"] == []
    rita.close()


def test_queue_filters_and_own_groups_first(served, photo_bytes) -> None:
    photo = photo_bytes["sample1.png"]
    soon = open_shown_task(served, photo, reviewer_group="legal", review_deadline_s=600)
    later = open_shown_task(
        served, photo, reviewer_group="brand", stage="request", requester="someone@acme",
        review_deadline_s=7200,
    )  # fmt: skip
    make_reviewer(served, "rita", group="brand")
    rita = _client(served, "rita")
    text = rita.get("/console/reviews").text
    assert text.index(later.task_id) < text.index(soon.task_id), "own group's task first"

    def ids(**params: str) -> set[str]:
        page = rita.get("/console/reviews", params=params)
        assert page.status_code == 200, page.text[:300]
        return set(re.findall(r'data-task="([0-9a-f]{32})"', page.text))

    assert ids(group="legal") == {soon.task_id}
    assert ids(stage="request") == {later.task_id}
    assert ids(requester="someone@acme") == {later.task_id}
    in_an_hour = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 3600))
    assert ids(due_before=in_an_hour) == {soon.task_id}
    assert ids(status="approved") == set()
    refresh = rita.get("/console/reviews", params={"refresh": "1"}).text
    assert '<meta http-equiv="refresh" content="30">' in refresh
    assert "Stop auto-refresh" in refresh
    for bad, status in (
        ({"status": "maybe"}, 400),
        ({"stage": "later"}, 400),
        ({"due_before": "tomorrow"}, 400),
        ({"tenant": "globex"}, 403),
    ):
        resp = rita.get("/console/reviews", params=bad)
        assert resp.status_code == status and "refused" in resp.text
    assert ("read", "TENANT_SCOPE") in [(b["action"], b["reason"]) for b in _refusals(served)]
    rita.close()


def test_tenant_walls_and_the_editor(served, photo_bytes) -> None:
    task = open_shown_task(served, photo_bytes["sample1.png"])
    make_reviewer(served, "gus", group="reviewers", tenant="globex")
    editor = make_account(served, "ed", "editor")
    gus = _client(served, "gus", tenant="globex")
    queue = gus.get("/console/reviews", params={"status": "all"})
    assert queue.status_code == 200 and task.task_id not in queue.text and "acme" not in queue.text
    for path in (
        f"/console/reviews/{task.task_id}",
        f"/console/reviews/{task.task_id}/content/inputs/0",
    ):
        resp = gus.get(path)
        assert resp.status_code == 404 and "acme" not in resp.text and PROMPT not in resp.text
    decided = gus.post_form(
        f"/console/reviews/{task.task_id}/decision",
        {"decision": "approve", "shown_digest": task.shown_digest},
    )
    assert decided.status_code == 404
    ops = make_account(served, "ops", "operator", tenant="custody")
    assert ops.tenant == "custody"
    operator = _client(served, "ops", tenant="custody")
    everyone = operator.get("/console/reviews").text
    assert task.task_id in everyone and "<th>tenant</th>" in everyone
    assert task.task_id not in operator.get("/console/reviews", params={"tenant": "globex"}).text
    # An editor's session (they cannot sign in; a session of theirs is still refused).
    services = served.services
    token = (
        ConsoleSessions(
            services.engine,  # type: ignore[attr-defined]
            services.ledger,  # type: ignore[attr-defined]
            ttl_ms=60_000,
            idle_ms=0,
        )
        .open(editor)
        .token
    )
    with httpx.Client(base_url=served.base_url, cookies={COOKIE: token}) as raw:
        for path in ("/console/reviews", f"/console/reviews/{task.task_id}"):
            assert raw.get(path).status_code == 403
    gus.close()
    operator.close()
