"""The console's pages through a real gateway, as a browser without JavaScript uses them: sign-in,
cookies, CSRF, throttling, sign-out, role checks and tenant walls on the ledger and verify pages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import RunningCustody, start_custody
from tests.console_helpers import (
    PASSWORD,
    ConsoleClient,
    console_events,
    csrf_of,
    make_account,
    signed_image,
)

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path_factory.mktemp("console") / "custody")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def browser(served: RunningCustody) -> Iterator[ConsoleClient]:
    client = ConsoleClient(served)
    try:
        yield client
    finally:
        client.close()


def _set_cookie(resp: httpx.Response, name: str) -> str:
    found = [v for v in resp.headers.get_list("set-cookie") if v.startswith(name + "=")]
    assert found, resp.headers
    return found[0]


def test_the_whole_visit_on_each_database(tmp_path: Path, db_url: str, photo_bytes) -> None:
    """Sign in, read the ledger, verify a signed image, verify the ledger, sign out."""
    running = start_custody(tmp_path / "custody", db_url)
    try:
        make_account(running, "alice", "auditor")
        image = signed_image(running, photo_bytes["sample1.png"])
        browser = ConsoleClient(running)
        assert browser.get("/console/ledger").headers["location"] == (
            "/console/sign-in?next=/console/ledger"
        )
        signed_in = browser.sign_in("alice", next_="/console/ledger")
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/console/ledger"
        page = browser.get("/console/ledger")
        assert page.status_code == 200
        assert "verified with this log&#39;s key" in page.text
        assert "turn.released" in page.text and "console.signed_in" in page.text

        shown = browser.http.post(
            "/console/verify",
            data={"csrf": csrf_of(page)},
            files={"image": ("teal.png", image, "image/png")},
        )
        assert shown.status_code == 200, shown.text[:500]
        assert 'id="c2pa-state" class="ok">Trusted' in shown.text
        turn = re.search(r'id="turn-id">([0-9a-f]{32})<', shown.text)
        assert turn, shown.text
        assert "each proven" in shown.text and "make the bicycle teal" in shown.text

        verified = browser.post_form("/console/ledger/verify")
        assert verified.status_code == 303
        assert "OK: the ledger verifies" in browser.get("/console/ledger").text

        out = browser.post_form("/console/sign-out")
        assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
        assert browser.get("/console/ledger").status_code == 303
        types = [e["type"] for e in console_events(running, "console.")]
        assert types == ["console.signed_in", "console.signed_out"]
        browser.close()
    finally:
        running.stop()


def test_the_session_cookie_is_http_only_same_site_and_path_bound(served, browser) -> None:
    make_account(served, "cookie-auditor", "auditor")
    resp = browser.sign_in("cookie-auditor")
    cookie = _set_cookie(resp, "custody_console").lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
    assert (
        "secure" not in cookie
    )  # plain http on loopback; CUSTODY_CONSOLE_COOKIE_SECURE=on sets it
    page = browser.get("/console/")
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_secure_cookies_when_configured(tmp_path: Path) -> None:
    running = start_custody(tmp_path / "custody", console_cookie_secure="on")
    try:
        make_account(running, "sec", "auditor")
        browser = ConsoleClient(running)
        page = browser.get("/console/sign-in")
        assert "secure" in _set_cookie(page, "custody_console_csrf").lower()
        token = csrf_of(page)
        # httpx keeps Secure cookies for https only: send the double-submit pair by hand.
        browser.http.cookies.set("custody_console_csrf", token)
        resp = browser.http.post(
            "/console/sign-in",
            data={"csrf": token, "tenant": "acme", "username": "sec", "password": PASSWORD},
        )
        assert resp.status_code == 303
        assert "; secure" in _set_cookie(resp, "custody_console").lower()
        browser.close()
    finally:
        running.stop()


def test_after_sign_in_only_console_pages_of_this_site(served, browser) -> None:
    make_account(served, "redirect-auditor", "auditor")
    for evil in ("https://evil.example/", "//evil.example/console/", "/api/v1/keys"):
        resp = browser.sign_in("redirect-auditor", next_=evil)
        assert resp.status_code == 303 and resp.headers["location"] == "/console/"


def test_a_wrong_password_an_unknown_name_and_an_editor_are_refused_and_recorded(
    served, browser
) -> None:
    editor = make_account(served, "ed", "editor")
    make_account(served, "pw-auditor", "auditor")
    before = len(console_events(served, "console.sign_in_failed"))
    wrong = browser.sign_in("pw-auditor", password="not the passphrase")
    assert wrong.status_code == 401 and "Wrong tenant, username or password" in wrong.text
    assert "custody_console=" not in wrong.headers.get("set-cookie", "")
    unknown = browser.sign_in("my secret passphrase typed here")
    assert unknown.status_code == 401
    refused = browser.sign_in("ed")
    assert refused.status_code == 403 and "Editors work through the API" in refused.text
    assert browser.get("/console/").status_code == 303  # none of them has a session
    failed = console_events(served, "console.sign_in_failed")[before:]
    assert [f["body"]["reason"] for f in failed] == [
        "bad_password",
        "unknown_account",
        "no_console_role",
    ]
    assert failed[2]["body"]["account"]["id"] == editor.account_id
    # A name that matched no account is recorded by its length only.
    assert failed[1]["body"] == {"account": None, "reason": "unknown_account", "username_chars": 31}
    assert not any(b"typed here" in e.leaf for e in served.services.ledger.entries(0, 10_000))


def test_posts_without_the_sessions_csrf_token_do_nothing(served, browser) -> None:
    make_account(served, "csrf-auditor", "auditor")
    make_account(served, "csrf-other", "auditor")
    assert browser.sign_in("csrf-auditor").status_code == 303
    other = ConsoleClient(served)
    assert other.sign_in("csrf-other").status_code == 303
    others_token = csrf_of(other.get("/console/"))
    for data in ({}, {"csrf": ""}, {"csrf": others_token}):
        resp = browser.http.post("/console/sign-out", data=data)
        assert resp.status_code == 403 and "security token" in resp.text
        resp = browser.http.post("/console/ledger/verify", data=data)
        assert resp.status_code == 403
    assert browser.get("/console/").status_code == 200  # still signed in: nothing was done
    refusals = [
        e for e in console_events(served, "request.refused") if e["actor"] == "csrf-auditor"
    ]
    assert len(refusals) == 6 and {r["body"]["reason"] for r in refusals} == {"CSRF_TOKEN_INVALID"}
    # The sign-in form needs its double-submit cookie: a form posted from elsewhere is refused.
    forged = httpx.post(
        served.base_url + "/console/sign-in",
        data={"csrf": "x", "tenant": "acme", "username": "csrf-auditor", "password": PASSWORD},
    )
    assert forged.status_code == 403 and "custody_console=" not in forged.headers.get(
        "set-cookie", ""
    )
    other.close()


def test_sign_out_ends_the_session_on_the_server(served, browser) -> None:
    make_account(served, "out-auditor", "auditor")
    assert browser.sign_in("out-auditor").status_code == 303
    stolen = browser.http.cookies["custody_console"]
    assert browser.post_form("/console/sign-out").status_code == 303
    replay = httpx.get(
        served.base_url + "/console/ledger", cookies={"custody_console": stolen}, timeout=30
    )
    assert replay.status_code == 303  # the copied cookie is dead too, not only the browser's


def test_an_idle_session_ends(served, browser) -> None:
    make_account(served, "idle-auditor", "auditor")
    assert browser.sign_in("idle-auditor").status_code == 303
    assert browser.get("/console/").status_code == 200
    idle_ms = served.services.settings.console_session_idle_s * 1000
    with served.services.engine.begin() as conn:  # as if the last request was that long ago
        conn.execute(
            text(
                "UPDATE console_sessions SET last_seen_ms = last_seen_ms - :idle"
                " WHERE account_id = (SELECT account_id FROM console_accounts"
                " WHERE username = 'idle-auditor')"
            ),
            {"idle": idle_ms + 1},
        )
    assert browser.get("/console/").status_code == 303


def test_roles_decide_the_pages_and_the_navigation(served, browser) -> None:
    make_account(served, "rev", "reviewer", groups=["legal"])
    assert browser.sign_in("rev").status_code == 303
    home = browser.get("/console/")
    assert home.status_code == 200 and "legal" in home.text
    assert 'href="/console/ledger"' not in home.text  # not in the navigation
    for path in ("/console/ledger", "/console/verify"):
        refused = browser.get(path)
        assert refused.status_code == 403 and "needs the &#39;auditor&#39;" in refused.text
    recorded = [e for e in console_events(served, "request.refused") if e["actor"] == "rev"]
    assert [r["body"]["path"] for r in recorded] == ["/console/ledger", "/console/verify"]


def test_a_reader_of_another_tenant_sees_nothing_of_acme(served, photo_bytes) -> None:
    image = signed_image(served, photo_bytes["sample1.png"])
    acme_turns = {
        e["turn"] for e in console_events(served, "turn.released") if e["tenant"] == "acme"
    }
    make_account(served, "globex-auditor", "auditor", tenant="globex")
    make_account(served, "ops", "operator", tenant="custody")
    outsider, operator = ConsoleClient(served), ConsoleClient(served)
    assert outsider.sign_in("globex-auditor", tenant="globex").status_code == 303
    assert operator.sign_in("ops", tenant="custody").status_code == 303

    ledger_page = outsider.get("/console/ledger").text
    assert not any(turn in ledger_page for turn in acme_turns)
    assert "acme" not in ledger_page and "turn.released" not in ledger_page
    assert any(turn in operator.get("/console/ledger").text for turn in acme_turns)

    token = csrf_of(outsider.get("/console/verify"))
    shown = outsider.http.post(
        "/console/verify", data={"csrf": token}, files={"image": ("x.png", image, "image/png")}
    )
    assert shown.status_code == 200
    assert "belongs to another tenant" in shown.text
    assert not any(turn in shown.text for turn in acme_turns)
    assert "acme" not in shown.text and "editor@acme" not in shown.text
    outsider.close()
    operator.close()


def test_the_verify_page_refuses_what_is_not_an_image(served, browser, photo_bytes) -> None:
    make_account(served, "upload-auditor", "auditor")
    assert browser.sign_in("upload-auditor").status_code == 303
    token = csrf_of(browser.get("/console/verify"))
    junk = browser.http.post(
        "/console/verify",
        data={"csrf": token},
        files={"image": ("notes.txt", b"just some text", "text/plain")},
    )
    assert junk.status_code == 400 and "not an image Custody can read" in junk.text
    missing = browser.http.post("/console/verify", data={"csrf": token})
    assert missing.status_code == 400 and "Choose an image file" in missing.text
    plain = browser.http.post(
        "/console/verify",
        data={"csrf": token},
        files={"image": ("earth.jpg", photo_bytes["earth_apollo17.jpg"], "image/jpeg")},
    )
    assert plain.status_code == 200 and "carries no Content Credentials" in plain.text
    reasons = [
        e["body"]["reason"]
        for e in console_events(served, "request.refused")
        if e["actor"] == "upload-auditor"
    ]
    assert reasons == ["BAD_VERIFY_REQUEST", "BAD_VERIFY_REQUEST"]


def test_sign_in_attempts_are_throttled_per_client(tmp_path: Path) -> None:
    running = start_custody(tmp_path / "custody", console_sign_in_per_client=3)
    try:
        make_account(running, "thr", "auditor")
        browser = ConsoleClient(running)
        for _ in range(3):
            assert browser.sign_in("thr", password="wrong passphrase").status_code == 401
        for _ in range(2):
            resp = browser.sign_in("thr")  # the right password, but too many attempts
            assert resp.status_code == 429 and "Too many sign-in attempts" in resp.text
        reasons = [e["body"]["reason"] for e in console_events(running, "console.sign_in_failed")]
        assert reasons == ["bad_password"] * 3 + ["client_throttled"]  # once per burst
        browser.close()
    finally:
        running.stop()
