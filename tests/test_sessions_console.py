"""The session page in Debian's Chromium (Playwright): a reviewer follows the link from a held
turn's review task to its session and sees the version graph as thumbnails — the upload, its two
branches, an edit of an edit, the label, who did what and the held turn; an editor is kept out and
another tenant's reviewer sees nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_POLICY, RunningCustody, start_custody
from tests.console_browser import sign_in
from tests.console_helpers import make_account
from tests.console_review_helpers import make_reviewer
from tests.session_helpers import api, b64, png

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCustody]:
    root = tmp_path_factory.mktemp("session-browser")
    policies = root / "policies"
    policies.mkdir()
    (policies / "custody.rego").write_text(TEST_POLICY)
    (policies / "data.json").write_text(json.dumps({"tenants": {"acme": {"review_wait_s": 0}}}))
    running = start_custody(root / "custody", policy_dir=policies)
    try:
        make_reviewer(running, "rita")
        make_account(running, "ed", "editor")
        make_reviewer(running, "gus", "brand", tenant="globex")
        yield running
    finally:
        running.stop()


def _edit(client: Any, session: str, version: str, instruction: str) -> dict[str, Any]:
    answer = client.post(
        f"/api/v1/sessions/{session}/turns",
        json={"instruction": instruction, "targets": [{"version": version}]},
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["results"][0]
    return result


def _session_with_a_held_turn(served: RunningCustody) -> tuple[str, dict[str, str], str]:
    client = api(served)
    session = client.post("/api/v1/sessions", json={"title": "sofa"}).json()["session"]
    upload = client.post(
        f"/api/v1/sessions/{session}/images",
        json={"data": b64(png(120, 80, (180, 120, 60))), "mime_type": "image/png",
              "source": "studio", "rights_holder": "Acme Studio"},
    ).json()["version"]  # fmt: skip
    teal = _edit(client, session, upload, "make it teal")["versions"][0]
    red = _edit(client, session, upload, "make it red")["versions"][0]  # a branch
    blur = _edit(client, session, teal, "blur it")["versions"][0]
    labelled = client.post(
        f"/api/v1/sessions/{session}/versions/{teal}/labels", json={"label": "StudioStyle1"}
    )
    assert labelled.status_code == 200
    held = _edit(client, session, blur, "needs-a-human: flatten it")
    assert held["status"] == "failed" and held["reason"] == "HELD_FOR_REVIEW", held
    reviews = api(served, "reviewer").get("/api/v1/reviews").json()["reviews"]
    (task,) = [r for r in reviews if r["turn"] == held["turn"]]
    assert task["session"] == session
    return session, {"upload": upload, "teal": teal, "red": red, "blur": blur}, task["id"]


def test_a_reviewer_follows_the_task_to_the_session_graph(
    served: RunningCustody, page: Any, tmp_path: Path
) -> None:
    session, v, task = _session_with_a_held_turn(served)
    sign_in(page, served.base_url, "rita", path=f"/console/reviews/{task}")
    page.click("#session-link")
    assert page.url == f"{served.base_url}/console/sessions/{session}"
    assert page.inner_text("#session-id") == session
    thumbs = page.locator(".version-tree img")
    assert thumbs.count() == 4
    for n in range(thumbs.count()):  # each loaded through the role-checked content route
        assert thumbs.nth(n).evaluate("img => img.complete && img.naturalWidth > 0")
    root = page.locator(f"#v-{v['upload']}")
    assert root.get_attribute("data-kind") == "upload"
    children = root.locator(":scope > ul.children > li.version")
    assert children.count() == 2, "two branches from the upload"
    assert {children.nth(n).get_attribute("id") for n in range(2)} == {
        f"v-{v['teal']}",
        f"v-{v['red']}",
    }
    teal = page.locator(f"#v-{v['teal']}")
    assert teal.locator(":scope > ul.children > li.version").get_attribute("id") == f"v-{v['blur']}"
    assert "StudioStyle1" in teal.locator(":scope > figure").inner_text()
    assert "by editor@acme" in teal.locator(":scope > figure").inner_text()
    assert "rights: Acme Studio" in page.inner_text(".image-graph .hint")
    statuses = [
        page.locator("tr.turn").nth(n).get_attribute("data-status")
        for n in range(page.locator("tr.turn").count())
    ]
    assert statuses == ["released", "released", "released", "failed"]
    page.screenshot(path=str(tmp_path / "session.png"), full_page=True)


def test_an_editor_is_kept_out_and_another_tenant_sees_nothing(
    served: RunningCustody, page: Any
) -> None:
    session = api(served).post("/api/v1/sessions", json={}).json()["session"]
    sign_in(page, served.base_url, "ed", path=f"/console/sessions/{session}")
    # An editor-only account has nothing to do in the console: it never gets past sign-in
    # (a session of theirs is refused 403 by the page: tests/test_authz_matrix.py).
    assert page.url.startswith(f"{served.base_url}/console/sign-in")
    assert session not in page.content()
    page.context.clear_cookies()
    sign_in(page, served.base_url, "gus", tenant="globex", path=f"/console/sessions/{session}")
    assert page.locator("h1", has_text="404").count() == 1
