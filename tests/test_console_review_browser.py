"""The review console in Debian's Chromium (Playwright) against a real gateway: a reviewer opens
the queue and a task, sees its images, approves; the requester's own approval, a second approval
where two are needed, a rejection with its reason, an auditor who reads but cannot decide (a
forged form is refused), an editor kept out, and tenant B's reviewer who sees nothing of A."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RunningCustody, start_custody
from tests.console_browser import sign_in
from tests.console_helpers import make_account
from tests.console_review_helpers import PROMPT, decide_in_browser, make_reviewer, open_shown_task
from tests.review_helpers import api

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path_factory.mktemp("review-browser") / "custody")
    try:
        for name in ("rita", "sam", "tess"):
            make_reviewer(running, name)
        make_reviewer(running, "editor@acme")  # the requester's actor, with a reviewer account
        make_account(running, "audrey", "auditor")
        make_account(running, "ed", "editor")
        make_reviewer(running, "gus", "brand", tenant="globex")
        yield running
    finally:
        running.stop()


def _review(served: RunningCustody, task_id: str) -> dict[str, Any]:
    resp = api(served, served.keys["reviewer"], "GET", f"/api/v1/reviews/{task_id}")
    assert resp.status_code == 200, resp.text
    review: dict[str, Any] = resp.json()["review"]
    return review


def _task(served: RunningCustody, photo_bytes: dict[str, bytes], **obligations: Any) -> Any:
    return open_shown_task(
        served, photo_bytes["sample1.png"], reviewer_group="brand", **obligations
    )


def test_a_reviewer_approves_from_the_queue(served, page, photo_bytes) -> None:
    task = _task(served, photo_bytes)
    sign_in(page, served.base_url, "rita", path="/console/reviews")
    assert page.url == served.base_url + "/console/reviews"
    row = page.locator(f"tr[data-task='{task.task_id}']")
    assert "yours" in row.inner_text()
    row.locator("a").click()
    assert page.url == f"{served.base_url}/console/reviews/{task.task_id}"
    assert page.inner_text("#prompt-text") == PROMPT
    images = page.locator("#content img")
    assert images.count() == 4  # input, held output, and the mask over its image
    for n in range(images.count()):  # each loaded through the role-checked content route
        assert images.nth(n).evaluate("img => img.complete && img.naturalWidth > 0")
    opacity = page.locator(".overlay img.mask").evaluate("m => getComputedStyle(m).opacity")
    assert 0 < float(opacity) < 1
    page.click("#approve")
    assert "Your approval is recorded" in page.inner_text("#done")
    assert page.inner_text("#task-status").startswith("approved")
    review = _review(served, task.task_id)
    assert review["status"] == "approved" and review["decisions"][0]["reviewer"] == "rita"
    types = [e["type"] for e in served.ledger_events(task.turn_id)]
    assert types[-2:] == ["review.decided", "review.approved"]


def test_the_requester_cannot_approve_their_own_turn(served, page, photo_bytes) -> None:
    task = _task(served, photo_bytes)  # requested by editor@acme
    sign_in(page, served.base_url, "editor@acme", path=f"/console/reviews/{task.task_id}")
    assert "You requested this turn" in page.inner_text("#decide")
    page.click("#approve")
    assert page.locator("h1", has_text="403").count() == 1
    assert "separation of duties" in page.inner_text("[role=alert]")
    assert "OWN_TURN" in page.inner_text("main")
    assert _review(served, task.task_id)["status"] == "pending"


def test_two_approvals_where_two_are_needed(served, page, chromium, photo_bytes) -> None:
    task = _task(served, photo_bytes, approvals_required=2)
    sign_in(page, served.base_url, "sam")
    decide_in_browser(page, served.base_url, task.task_id, "approve")
    assert page.inner_text("#approvals").startswith("1 of 2")
    assert _review(served, task.task_id)["status"] == "pending"
    second = chromium.new_context().new_page()
    try:
        sign_in(second, served.base_url, "tess")
        decide_in_browser(second, served.base_url, task.task_id, "approve")
        assert second.inner_text("#task-status").startswith("approved")
    finally:
        second.context.close()
    review = _review(served, task.task_id)
    assert review["status"] == "approved" and review["approvals"] == 2


def test_a_rejection_with_its_reason(served, page, photo_bytes) -> None:
    task = _task(served, photo_bytes)
    sign_in(page, served.base_url, "rita")
    decide_in_browser(page, served.base_url, task.task_id, "reject", "the child is recognisable")
    assert "the child is recognisable" in page.inner_text("#task-status")
    review = _review(served, task.task_id)
    assert review["status"] == "rejected" and review["reason"] == "the child is recognisable"
    assert [e["type"] for e in served.ledger_events(task.turn_id)][-1] == "review.rejected"


def test_an_auditor_reads_the_queue_but_cannot_decide(served, page, photo_bytes) -> None:
    task = _task(served, photo_bytes)
    sign_in(page, served.base_url, "audrey", path="/console/reviews")
    assert page.locator(f"tr[data-task='{task.task_id}']").count() == 1
    assert page.locator("#read-only").count() == 1
    page.goto(f"{served.base_url}/console/reviews/{task.task_id}")
    assert page.locator("#decision-form").count() == 0 and page.locator("#read-only").count() == 1
    # What a forged form looks like: the fields a reviewer's page would post, with this session's
    # own token (copied from the sign-out form) — still refused: auditors do not decide.
    page.evaluate(
        """([action, digest]) => {
            const f = document.createElement('form');
            f.method = 'post'; f.action = action;
            const token = document.querySelector('input[name=csrf]').value;
            const fields = [['csrf', token], ['decision', 'approve'], ['shown_digest', digest]];
            for (const [k, v] of fields) {
                const i = document.createElement('input');
                i.type = 'hidden'; i.name = k; i.value = v;
                f.appendChild(i);
            }
            document.body.appendChild(f); f.submit();
        }""",
        [f"/console/reviews/{task.task_id}/decision", task.shown_digest],
    )
    page.wait_for_selector("[role=alert]")
    assert page.locator("h1", has_text="403").count() == 1
    assert "Only reviewers" in page.inner_text("[role=alert]")
    assert _review(served, task.task_id)["decisions"] == []


def test_an_editor_cannot_open_the_console(served, page) -> None:
    sign_in(page, served.base_url, "ed", path="/console/reviews")
    assert "Editors work through the API" in page.inner_text("[role=alert]")
    page.goto(served.base_url + "/console/reviews")
    assert page.url.startswith(served.base_url + "/console/sign-in")


def test_tenant_b_sees_nothing_of_tenant_a(served, page, photo_bytes) -> None:
    task = _task(served, photo_bytes)
    sign_in(page, served.base_url, "gus", tenant="globex", path="/console/reviews?status=all")
    text = page.inner_text("main")
    assert task.task_id not in text and "acme" not in text
    assert "No review tasks match" in text
    page.goto(f"{served.base_url}/console/reviews/{task.task_id}")
    assert page.locator("h1", has_text="404").count() == 1
    assert PROMPT not in page.inner_text("main") and "acme" not in page.inner_text("main")
