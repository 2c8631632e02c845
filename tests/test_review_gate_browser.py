"""The whole gate as people meet it: an app's google-genai call is held by policy, a reviewer
signs in to the console in Debian's Chromium and approves the task, and the waiting call returns
the signed image whose manifest names that reviewer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.console_browser import sign_in
from tests.console_review_helpers import decide_in_browser, make_reviewer
from tests.test_review_gates import (  # one held-turn set-up for the API and the browser tests
    Upstream,
    _gateway,
    _generate,
    _image,
    _in_background,
    _open_task,
    _verify,
)

pytestmark = pytest.mark.browser


def test_a_reviewer_approves_in_the_browser_and_the_waiting_sdk_call_returns(
    tmp_path: Path,
    page: Any,
    sqlite_url: str,
) -> None:
    upstream = Upstream()  # the emulator as its own upstream, counting the calls it gets
    custody = _gateway(tmp_path, "custody", upstream, sqlite_url, wait_s=120)
    try:
        make_reviewer(custody, "rita", "reviewers")
        thread, out = _in_background(lambda: _generate(custody, "needs-a-human: a teal sofa"))
        task = _open_task(custody, "request")
        assert thread.is_alive() and upstream.calls() == 0  # held: Gemini has seen nothing
        sign_in(page, custody.base_url, "rita", path="/console/reviews")
        decide_in_browser(page, custody.base_url, task.task_id, "approve")
        assert "Your approval is recorded" in page.inner_text("#done")
        thread.join(120)
        assert "error" not in out, out.get("error")
        image = _image(out["value"])
        assert upstream.calls() == 1
        report = _verify(custody, image)
        (approval,) = report["approvals"]  # the manifest's approval, checked against the ledger
        assert (approval["reviewer"], approval["task"]) == ("rita", task.task_id), approval
        assert approval["in_ledger"] and approval["covers_these_bytes"], approval
    finally:  # Playwright's sync API holds this thread's event loop: stop from another thread
        stopper = threading.Thread(target=custody.stop)
        stopper.start()
        stopper.join(60)
        upstream.server.stop()
