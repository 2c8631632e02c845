"""Two ``custody serve`` processes on one PostgreSQL: a turn held on one is decided on the other,
and the caller waiting on the first gets its signed image (the review desk's rows and the ledger
are the only things the processes share)."""

from __future__ import annotations

from pathlib import Path

import httpx
from google import genai
from google.genai import types

from bench.soak import Gateway
from tests.test_review_gates import MODEL, _image, _in_background, _policy


def _key(gateway: Gateway, role: str) -> str:
    made = gateway.cli("keys", "create", "--role", role, "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def _api(gateway: Gateway, key: str, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(
        method, gateway.base_url + path, headers={"x-goog-api-key": key}, timeout=60, **kw
    )


def test_a_turn_held_on_one_serve_process_is_released_by_a_decision_on_another(
    pg_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    a, b = Gateway(pg_url, data), Gateway(pg_url, data)
    policy = _policy(tmp_path, wait_s=120)
    for gateway in (a, b):
        gateway.env.pop("CUSTODY_EMULATOR_LATENCY_MS", None)
        gateway.env["CUSTODY_POLICY_DIR"] = str(policy)
    editor, reviewer, admin = (_key(a, role) for role in ("editor", "reviewer", "admin"))
    a.start()
    b.start()
    try:
        added = _api(
            b, admin, "POST", "/api/v1/review-groups/reviewers/members",
            json={"actor": "reviewer@acme"},
        )  # fmt: skip
        assert added.status_code == 200, added.text
        client = genai.Client(api_key=editor, http_options=types.HttpOptions(base_url=a.base_url))
        thread, out = _in_background(
            lambda: client.models.generate_content(model=MODEL, contents="needs-a-human: a sofa")
        )
        task: dict[str, object] = {}
        for _ in range(600):  # B sees the task A opened
            listed = _api(b, reviewer, "GET", "/api/v1/reviews?stage=request")
            assert listed.status_code == 200, listed.text
            if listed.json()["reviews"]:
                task = listed.json()["reviews"][0]
                break
            thread.join(0.1)
        assert task and thread.is_alive(), "A opened a task and holds the caller"
        review = _api(b, reviewer, "GET", f"/api/v1/reviews/{task['id']}").json()["review"]
        decided = _api(
            b, reviewer, "POST", f"/api/v1/reviews/{task['id']}/decision",
            json={"decision": "approve", "comment": "fine", "shown_digest": review["shown_digest"]},
        )  # fmt: skip
        assert decided.status_code == 200, decided.text
        thread.join(120)
        assert "error" not in out, out.get("error")
        image = _image(out["value"])
        verified = httpx.post(
            b.base_url + "/api/v1/verify",
            content=image,
            headers={"x-goog-api-key": admin, "content-type": "image/png"},
            timeout=60,
        ).json()
        (approval,) = verified["approvals"]
        assert approval["task"] == task["id"] and approval["covers_these_bytes"], approval
    finally:
        a.stop()
        b.stop()
