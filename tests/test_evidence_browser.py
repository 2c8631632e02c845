"""The evidence page in Debian's Chromium (Playwright): an auditor exports a session's evidence,
downloads the zip, and it verifies offline; a since/until window cuts the export, a bad one is
refused on the page and recorded; another tenant's auditor sees none of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from governance.evidence.verify import verify_bundle
from tests.conftest import RunningCustody
from tests.console_browser import screenshot, sign_in
from tests.console_helpers import make_account
from tests.evidence_helpers import SESSION, run_session, start
from tests.review_helpers import api

pytestmark = pytest.mark.browser
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def custody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCustody]:
    """The gateway, started before the browser and stopped after it (its shutdown runs an event
    loop, which cannot run inside Playwright's)."""
    running = start(tmp_path_factory.mktemp("evidence-browser"))
    try:
        yield running
    finally:
        running.stop()


def test_an_auditor_exports_and_downloads_a_bundle_that_verifies(
    custody: RunningCustody, page: Any, tmp_path: Path
) -> None:
    driven = run_session(custody, (FIXTURES / "IMG_0003.jpg").read_bytes())
    assert api(custody, custody.keys["admin"], "POST", "/api/v1/ledger/checkpoint").is_success
    make_account(custody, "alice", "auditor")
    make_account(custody, "gina", "auditor", tenant="globex")
    sign_in(page, custody.base_url, "alice", path="/console/evidence")
    assert page.url == custody.base_url + "/console/evidence"
    assert "No bundles yet" in page.inner_text("main")
    page.fill("input[name=session]", SESSION)
    page.select_option("select[name=disclose]", "prompts")
    page.click("#export-form button[type=submit]")
    summary = page.inner_text("#made-summary")
    assert "entries proven against the checkpoint" in summary
    with page.expect_download() as download:
        page.click("#download")
    path = tmp_path / "from-browser.zip"
    download.value.save_as(path)
    vkey = custody.services.ledger.signer.verifier_key()  # type: ignore[attr-defined]
    report = verify_bundle(path, log_key=vkey)
    assert report.ok, report.summary()
    assert report.checked["images"] == 4
    assert page.locator("table.bundles code").count() == 1
    assert screenshot(page, tmp_path / "evidence.png").stat().st_size > 10_000
    exported = [e for e in custody.ledger_events() if e["type"] == "evidence.exported"]
    assert len(exported) == 1 and exported[0]["actor"] == "alice"
    assert exported[0]["body"]["disclose"] == ["prompt"]
    assert len(driven.prompts) == 3
    # a window: entries from the rollback's first one on (ms in "since", ISO 8601 in "until")
    ledger = custody.services.ledger  # type: ignore[attr-defined]
    times = {e.index: e.time_ms for e in ledger.entries(0, ledger.latest_checkpoint().size)}
    events = custody.ledger_events()
    start = min(
        times[int(e["index"])]  # type: ignore[call-overload]
        for e in events
        if e.get("turn") == driven.rollback["turn"] and int(e["index"]) in times  # type: ignore[call-overload]
    )
    page.fill("input[name=since]", str(start))
    page.fill("input[name=until]", "9999-12-31T23:59:59Z")
    page.click("#export-form button[type=submit]")
    assert page.input_value("input[name=since]") == str(start)  # the form keeps what was asked
    with page.expect_download() as download:
        page.click("#download")
    window = tmp_path / "window.zip"
    download.value.save_as(window)
    cut = verify_bundle(window, log_key=vkey)
    assert cut.ok, cut.summary()
    assert cut.events["lineage.recorded (rollback)"] == 1 and cut.checked["images"] == 1
    assert "review.decided" not in cut.events
    # a bad window is refused on the page, says why, and is recorded
    page.fill("input[name=since]", "last tuesday")
    page.click("#export-form button[type=submit]")
    assert "since takes an ISO 8601 time" in page.inner_text("#export-error")
    refused = [
        e
        for e in custody.ledger_events()
        if e["type"] == "request.refused" and e["body"]["path"] == "/console/evidence"  # type: ignore[index]
    ]
    assert refused and refused[-1]["actor"] == "alice" and refused[-1]["body"]["code"] == 400  # type: ignore[index]
    page.fill("input[name=since]", "")
    page.fill("input[name=until]", "")
    # an empty selection is refused on the page, and nothing is recorded
    page.fill("input[name=session]", "no-such-session")
    page.click("#export-form button[type=submit]")
    assert "Export refused: no entries" in page.inner_text("#export-error")
    # another tenant's auditor: no bundles listed, the download is refused
    page.context.clear_cookies()
    sign_in(page, custody.base_url, "gina", tenant="globex", path="/console/evidence")
    assert "No bundles yet" in page.inner_text("main")
    bundle_id = exported[0]["body"]["bundle"]
    resp = page.goto(f"{custody.base_url}/console/evidence/{bundle_id}/download")
    assert resp is not None and resp.status == 404
