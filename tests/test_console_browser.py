"""The console in Debian's Chromium (Playwright), against a real gateway: sign in, read the ledger,
verify a signed image, and every refusal a person can meet — a wrong password, an editor's
account, a form without its CSRF token, a signed-out session, another tenant's records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningCustody, start_custody
from tests.console_browser import screenshot, sign_in, upload_for_verification
from tests.console_helpers import make_account, signed_image

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, photo_bytes) -> Iterator[dict[str, Any]]:
    running: RunningCustody = start_custody(tmp_path_factory.mktemp("browser") / "custody")
    try:
        make_account(running, "alice", "auditor", groups=["legal"])
        make_account(running, "ed", "editor")
        make_account(running, "gina", "auditor", tenant="globex")
        folder = tmp_path_factory.mktemp("images")
        signed = folder / "teal-bicycle.png"
        signed.write_bytes(signed_image(running, photo_bytes["sample1.png"]))
        yield {"custody": running, "url": running.base_url, "signed": signed}
    finally:
        running.stop()


def test_sign_in_and_read_the_ledger(served, page, tmp_path: Path) -> None:
    sign_in(page, served["url"], "alice", path="/console/ledger")
    assert page.url == served["url"] + "/console/ledger"
    assert "verified with this log's key" in page.inner_text("#signature-status")
    size = served["custody"].services.ledger.size()
    assert page.inner_text("#tree-size").split()[0].isdigit()
    assert int(page.inner_text("#tree-size").split()[0]) <= size
    assert page.locator("table.events code", has_text="turn.released").count() >= 1
    page.click("text=Verify the whole ledger now")
    assert page.inner_text("#verify-status").startswith("OK: the ledger verifies")
    assert screenshot(page, tmp_path / "ledger.png").stat().st_size > 10_000


def test_upload_a_signed_image_and_see_its_provenance(served, page, tmp_path: Path) -> None:
    sign_in(page, served["url"], "alice")
    upload_for_verification(page, served["url"], served["signed"])
    assert page.inner_text("#c2pa-state").startswith("Trusted")
    assert page.inner_text("#independent-state") == "encypher-c2pa: Trusted"
    turn = page.inner_text("#turn-id")
    assert len(turn) == 32
    record = page.inner_text("#record-status")
    assert turn in record and "each proven" in record
    assert "No approvals" in page.inner_text("#approvals")
    assert screenshot(page, tmp_path / "verify.png").stat().st_size > 10_000


def test_a_wrong_password_is_refused(served, page) -> None:
    sign_in(page, served["url"], "alice", password="this is not it at all")
    assert "Wrong tenant, username or password" in page.inner_text("[role=alert]")
    page.goto(served["url"] + "/console/ledger")
    assert page.url.startswith(served["url"] + "/console/sign-in")


def test_an_editor_account_cannot_open_the_console(served, page) -> None:
    sign_in(page, served["url"], "ed")
    assert "Editors work through the API" in page.inner_text("[role=alert]")
    page.goto(served["url"] + "/console/")
    assert page.url.startswith(served["url"] + "/console/sign-in")


def test_a_form_without_its_csrf_token_is_refused(served, page) -> None:
    sign_in(page, served["url"], "alice", path="/console/ledger")
    # What a forged cross-site form looks like: the same fields, but no token of this session.
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.value = 'forged')")
    page.click("text=Verify the whole ledger now")
    assert "security token" in page.inner_text("[role=alert]")
    assert page.locator("h1", has_text="403").count() == 1
    page.goto(served["url"] + "/console/ledger")  # and the person is still signed in
    assert page.url == served["url"] + "/console/ledger"


def test_sign_out_ends_the_session(served, page, chromium) -> None:
    sign_in(page, served["url"], "alice")
    cookies = page.context.cookies()
    page.click("text=Sign out")
    assert page.url.startswith(served["url"] + "/console/sign-in")
    page.goto(served["url"] + "/console/ledger")
    assert page.url.startswith(served["url"] + "/console/sign-in")
    # The session cookie copied before signing out opens nothing either: it ended on the server.
    other = chromium.new_context()
    try:
        other.add_cookies(cookies)
        replay = other.new_page()
        replay.goto(served["url"] + "/console/ledger")
        assert replay.url.startswith(served["url"] + "/console/sign-in")
    finally:
        other.close()


def test_a_tenant_b_account_sees_nothing_of_tenant_a(served, page) -> None:
    acme_turns = {
        e["turn"]
        for e in served["custody"].ledger_events()
        if e["tenant"] == "acme" and e["type"] == "turn.released"
    }
    assert acme_turns
    sign_in(page, served["url"], "gina", tenant="globex", path="/console/ledger")
    text = page.inner_text("main")
    assert "acme" not in text and not any(t in text for t in acme_turns)
    upload_for_verification(page, served["url"], served["signed"])
    text = page.inner_text("main")
    assert "belongs to another tenant" in text
    assert "acme" not in text and not any(t in text for t in acme_turns)
