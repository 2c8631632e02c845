"""The two review gates in a real turn: the google-genai SDK against real Custody processes.

A held call blocks while a reviewer decides over the native API (from another thread, or from
another gateway process on the same PostgreSQL); an approval lets the waiting call return its
signed image, whose manifest lists the approval that ``POST /api/v1/verify`` proves covered
those bytes; a rejection or a deadline reaches the caller with the reason; the identical request
after a response-stage approval is released without a second upstream call.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from governance.review import ReviewTask, desk_for
from governance.upstream.embedded import ThreadedServer
from governance.upstream.emulator.app import create_emulator_app
from governance.upstream.emulator.config import EmulatorConfig
from tests.conftest import RunningCustody, start_custody
from tests.review_helpers import add_member, api, decide

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"

# Holds 'needs-a-human' before the call and 'hold-the-output' before release; the wait and the
# deadline come from the policy's data, per tenant (as policies/custody/tenants/data.json does).
POLICY = """package custody

tenant := object.get(data.tenants, input.actor.tenant, {})

terms := {
  "review_wait_s": object.get(tenant, "review_wait_s", 0),
  "review_deadline_s": object.get(tenant, "review_deadline_s", 86400),
}

default decision := {"outcome": "allow", "reasons": [], "obligations": {}}

decision := {"outcome": "review", "reasons": ["the test policy reviews 'needs-a-human'"],
  "obligations": terms} if {
  contains(lower(input.request.prompt), "needs-a-human")
}

decision := {"outcome": "review_output", "reasons": ["the test policy holds outputs"],
  "obligations": terms} if {
  contains(lower(input.request.prompt), "hold-the-output")
}
"""


def _policy(tmp_path: Path, wait_s: int, deadline_s: int = 86400) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "custody.rego").write_text(POLICY)
    tenants = {"acme": {"review_wait_s": wait_s, "review_deadline_s": deadline_s}}
    (folder / "data.json").write_text(json.dumps({"tenants": tenants}))
    return folder


class Upstream:
    """The emulator as a separate upstream whose request log counts the calls it got."""

    def __init__(self) -> None:
        self.app = create_emulator_app(EmulatorConfig())
        self.server = ThreadedServer(self.app).start()

    def calls(self) -> int:
        return sum(1 for e in self.app.state.request_log if e["action"] == "generateContent")


@pytest.fixture()
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    try:
        yield up
    finally:
        up.server.stop()


def _gateway(
    tmp_path: Path, name: str, upstream: Upstream, database_url: str, **kw: Any
) -> RunningCustody:
    running = start_custody(
        tmp_path / name,
        database_url,
        upstream_base_url=upstream.server.base_url,
        emulator="auto",
        upstream_api_key="",
        policy_dir=_policy(tmp_path, **kw),
    )
    return running


def _sdk(custody: RunningCustody) -> genai.Client:
    return custody.client("editor")  # type: ignore[return-value]


def _generate(custody: RunningCustody, prompt: str) -> types.GenerateContentResponse:
    return _sdk(custody).models.generate_content(model=MODEL, contents=prompt)


def _image(response: types.GenerateContentResponse) -> bytes:
    parts = response.candidates[0].content.parts  # type: ignore[index,union-attr]
    images = [p.inline_data.data for p in parts if p.inline_data and p.inline_data.data]
    assert len(images) == 1, parts
    return images[0]  # type: ignore[return-value]


def _in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # the test asserts on it
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _open_task(custody: RunningCustody, stage: str, timeout_s: float = 60) -> ReviewTask:
    """The open task of ``stage`` once the held turn opened it."""
    desk = desk_for(custody.services)  # type: ignore[arg-type]
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        resp = api(custody, custody.keys["reviewer"], "GET", f"/api/v1/reviews?stage={stage}")
        assert resp.status_code == 200, resp.text
        found = resp.json()["reviews"]
        if found:
            task = desk.get(found[0]["id"])
            assert task is not None
            return task
        time.sleep(0.1)
    raise AssertionError(f"no {stage} task was opened")


def _verify(custody: RunningCustody, image: bytes) -> dict[str, Any]:
    resp = httpx.post(
        custody.base_url + "/api/v1/verify",
        content=image,
        headers={"x-goog-api-key": custody.keys["admin"], "content-type": "image/png"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _cli_verify(
    custody: RunningCustody, image: bytes, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """``custody verify`` on the released file, against this gateway's installation."""
    path = tmp_path / "released.png"
    path.write_bytes(image)
    settings = custody.services.settings  # type: ignore[attr-defined]
    env = {
        "CUSTODY_DATA_DIR": str(settings.data_dir),
        "CUSTODY_DATABASE_URL": settings.database_url,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", "verify", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=180,
    )


def _details(exc: errors.APIError) -> dict[str, Any]:
    return exc.details["error"]["details"][0]  # type: ignore[no-any-return,index]


def test_a_held_call_waits_and_an_approval_returns_the_signed_image_listing_it(
    tmp_path: Path, upstream: Upstream, db_url: str
) -> None:
    custody = _gateway(tmp_path, "custody", upstream, db_url, wait_s=60)
    try:
        add_member(custody, "reviewers", "reviewer@acme")
        thread, out = _in_background(lambda: _generate(custody, "needs-a-human: a teal sofa"))
        task = _open_task(custody, "request")
        assert upstream.calls() == 0  # Gemini sees nothing until approved
        assert thread.is_alive()  # the caller is held, not answered
        resp = decide(custody, custody.keys["reviewer"], task, "approve", "fine")
        assert resp.status_code == 200, resp.text
        thread.join(60)
        assert "error" not in out, out.get("error")
        image = _image(out["value"])
        assert upstream.calls() == 1
        report = _verify(custody, image)
        approvals = report["c2pa"]["custody"]["approvals"]
        assert [a["reviewer"] for a in approvals] == ["reviewer@acme"]
        assert approvals[0]["task"] == task.task_id
        assert approvals[0]["shown_digest"] == task.shown_digest
        (check,) = report["approvals"]
        assert check["reviewer"] == "reviewer@acme"
        assert check["in_ledger"] and check["covers_these_bytes"]
        cli = _cli_verify(custody, image, tmp_path)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert f"approved by reviewer@acme (reviewers, request review, task {task.task_id}):" in (
            cli.stdout
        )
        assert "covered these bytes" in cli.stdout
    finally:
        custody.stop()


def test_a_rejection_reaches_the_waiting_caller_and_its_retry_with_the_reason(
    tmp_path: Path, upstream: Upstream, db_url: str
) -> None:
    custody = _gateway(tmp_path, "custody", upstream, db_url, wait_s=60)
    try:
        add_member(custody, "reviewers", "reviewer@acme")
        prompt = "needs-a-human: the logo on a mug"
        thread, out = _in_background(lambda: _generate(custody, prompt))
        task = _open_task(custody, "request")
        resp = decide(custody, custody.keys["reviewer"], task, "reject", "not our brand colours")
        assert resp.status_code == 200, resp.text
        thread.join(60)
        err = out["error"]
        assert isinstance(err, errors.ClientError) and err.code == 403
        assert "not our brand colours" in (err.message or "")
        assert _details(err)["reason"] == "REVIEW_REJECTED"
        with pytest.raises(errors.ClientError) as again:
            _generate(custody, prompt)
        assert again.value.code == 403 and "not our brand colours" in (again.value.message or "")
        assert upstream.calls() == 0
    finally:
        custody.stop()


def test_a_held_output_is_released_once_approved_and_its_retry_makes_no_second_call(
    tmp_path: Path, upstream: Upstream, db_url: str
) -> None:
    custody = _gateway(tmp_path, "custody", upstream, db_url, wait_s=0)
    try:
        add_member(custody, "reviewers", "reviewer@acme")
        prompt = "hold-the-output: a poster"
        with pytest.raises(errors.ClientError) as held:
            _generate(custody, prompt)
        assert held.value.code == 409
        message = held.value.message or ""
        task = _open_task(custody, "response")
        assert task.task_id in message and f"/console/reviews/{task.task_id}" in message
        assert "send the same request again" in message
        assert len(task.shown["outputs"]) == 1
        assert upstream.calls() == 1
        with pytest.raises(errors.ClientError) as pending:
            _generate(custody, prompt)
        assert pending.value.code == 409 and "still pending" in (pending.value.message or "")
        resp = decide(custody, custody.keys["reviewer"], task, "approve", "ok to publish")
        assert resp.status_code == 200, resp.text
        image = _image(_generate(custody, prompt))
        assert upstream.calls() == 1  # the held answer, signed after the approval
        report = _verify(custody, image)
        (check,) = report["approvals"]
        assert check["stage"] == "response" and check["covers_these_bytes"]
        assert check["task"] == task.task_id
    finally:
        custody.stop()


def test_a_deadline_reaches_the_waiting_caller(
    tmp_path: Path, upstream: Upstream, db_url: str
) -> None:
    custody = _gateway(tmp_path, "custody", upstream, db_url, wait_s=60, deadline_s=1)
    try:
        thread, out = _in_background(lambda: _generate(custody, "needs-a-human: a portrait"))
        task = _open_task(custody, "request")
        desk = desk_for(custody.services)  # type: ignore[arg-type]
        end = time.monotonic() + 30
        while not desk.apply_deadlines() and time.monotonic() < end:
            time.sleep(0.2)  # the background job does this too; here it is not left to timing
        thread.join(60)
        err = out["error"]
        assert isinstance(err, errors.ClientError) and err.code == 403
        assert "deadline" in (err.message or "") and task.task_id in (err.message or "")
    finally:
        custody.stop()


def test_a_task_opened_on_one_gateway_is_decided_on_another_and_the_caller_gets_its_answer(
    tmp_path: Path, upstream: Upstream, pg_url: str
) -> None:
    first = _gateway(tmp_path, "first", upstream, pg_url, wait_s=60)
    second = None
    try:
        second = _gateway(tmp_path, "second", upstream, pg_url, wait_s=60)
        add_member(second, "reviewers", "reviewer@acme")
        thread, out = _in_background(lambda: _generate(first, "needs-a-human: a shop window"))
        task = _open_task(second, "request")
        resp = decide(second, second.keys["reviewer"], task, "approve", "fine")
        assert resp.status_code == 200, resp.text
        thread.join(60)
        assert "error" not in out, out.get("error")
        assert _image(out["value"])
    finally:
        first.stop()
        if second is not None:
            second.stop()
