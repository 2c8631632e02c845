"""The console's compliance pages in Debian's Chromium (Playwright), against a real gateway:
an auditor filters the turns, pages on, opens a row's proof and sees every entry proven; the
oversight page draws its charts and hands over the same figures as CSV and JSON; another
tenant's auditor sees none of it; a reviewer is refused both pages."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningCustody, start_custody
from tests.console_browser import screenshot, sign_in
from tests.console_helpers import make_account

pytestmark = pytest.mark.browser
MODEL = "gemini-2.5-flash-image"


def _turn(running: RunningCustody, prompt: str, session: str, key: str = "editor") -> None:
    resp = httpx.post(
        f"{running.base_url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
        headers={"x-goog-api-key": running.keys[key], "x-custody-session": session},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    running = start_custody(tmp_path_factory.mktemp("compliance-browser") / "custody")
    try:
        make_account(running, "alice", "auditor")
        make_account(running, "rita", "reviewer")
        make_account(running, "gina", "auditor", tenant="globex")
        for i in range(30):
            _turn(running, f"bicycle number {i}", "s-many" if i % 2 else "s-few")
        _turn(running, "a globex kite", "s-many", key="other-tenant-editor")
        yield {"custody": running, "url": running.base_url}
    finally:
        running.stop()


def test_an_auditor_filters_pages_and_proves_turns(served, page, tmp_path: Path) -> None:
    url = served["url"]
    sign_in(page, url, "alice", path="/console/queries")
    assert page.url == url + "/console/queries"
    assert page.locator("nav a", has_text="Queries").count() == 1
    page.fill("input[name=session]", "s-many")
    page.click("#query-form button[type=submit]")
    rows = page.locator("#turns tbody tr")
    assert rows.count() == 15
    # the client named its session s-many; rows show the session Custody attached the turns to
    shown = {rows.nth(i).locator("td").nth(3).inner_text() for i in range(15)}
    assert len(shown) == 1 and shown.pop().startswith("ses_")
    # All 30 of acme's turns over two pages; none of globex's.
    page.goto(url + "/console/queries")
    first = page.locator("#turns tbody tr td:nth-child(2)").all_inner_texts()
    assert len(first) == 25
    page.click("#next-page")
    second = page.locator("#turns tbody tr td:nth-child(2)").all_inner_texts()
    assert len(second) == 5 and not set(first) & set(second)
    page.goto(url + "/console/queries")
    page.locator("a.proof").first.click()
    for _ in range(10):  # a turn newer than the checkpoint: the page reloads until it is signed
        if "proven against checkpoint" in page.inner_text("#proof-status"):
            break
        page.wait_for_timeout(1000)
        page.reload()
    status = page.inner_text("#proof-status")
    proven, total = status.split(" entries")[0].split(" of ")
    assert proven == total and int(total) >= 5, status
    assert screenshot(page, tmp_path / "proof.png").stat().st_size > 10_000


def test_oversight_charts_and_downloads(served, page, tmp_path: Path) -> None:
    url = served["url"]
    sign_in(page, url, "alice", path="/console/oversight")
    assert page.inner_text("#turns-count") == "30"
    assert page.locator("#turns-chart rect.bar-allow").count() >= 1
    assert page.locator("#rates-chart rect").count() == 5
    with page.expect_download() as got:
        page.click("#download-csv")
    rows = dict(csv.reader(io.StringIO(Path(got.value.path()).read_text())))
    assert rows["turns"] == "30" and rows["tenant"] == "acme"
    with page.expect_download() as got:
        page.click("#download-json")
    figures = json.loads(Path(got.value.path()).read_text())
    assert figures["turns"] == 30 and figures["sessions"]["with_kept_output"] == 2
    assert screenshot(page, tmp_path / "oversight.png").stat().st_size > 10_000


def test_another_tenant_sees_nothing_and_a_reviewer_is_refused(served, page) -> None:
    url = served["url"]
    sign_in(page, url, "gina", tenant="globex", path="/console/queries")
    texts = page.locator("#turns tbody tr td:nth-child(2)").all_inner_texts()
    assert len(texts) == 1  # globex's one turn
    page.goto(url + "/console/oversight")
    assert page.inner_text("#turns-count") == "1"
    page.goto(url + "/console/oversight?tenant=acme")
    assert "reads tenant 'globex' only" in page.inner_text("main")
    page.context.clear_cookies()
    sign_in(page, url, "rita", path="/console/queries")
    assert page.locator("nav a", has_text="Queries").count() == 0
    page.goto(url + "/console/oversight")
    assert "auditor" in page.inner_text("main")
