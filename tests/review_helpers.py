"""Helpers for the review tests: open a task as the pipeline will, call the review API."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx

from governance.review import HeldTurn, ReviewTask, Shown, desk_for
from tests.conftest import RunningCustody


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_task(
    custody: RunningCustody,
    *,
    requester: str = "editor@acme",
    tenant: str = "acme",
    stage: str = "request",
    request: bytes | None = None,
    **obligations: Any,
) -> ReviewTask:
    """Open a review task on ``custody``'s database the way the pipeline does for a held turn."""
    body = request or uuid.uuid4().bytes
    held = HeldTurn(
        tenant=tenant,
        turn_id=uuid.uuid4().hex,
        stage=stage,  # type: ignore[arg-type]
        requester=requester,
        request_hash=digest(body),
        shown=Shown(
            request=digest(body),
            prompt=digest(b"make the sofa teal"),
            inputs=(digest(b"photo"),),
            masks=(digest(b"mask"),),
            outputs=(digest(b"held output"),) if stage == "response" else (),
        ),
        reasons=("the test holds it",),
    )
    return desk_for(custody.services).open(held, obligations)  # type: ignore[arg-type]


def api(custody: RunningCustody, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method,
        custody.base_url + path,
        headers={"x-goog-api-key": key},
        timeout=30,
        **kwargs,
    )


def add_member(custody: RunningCustody, group: str, actor: str, tenant: str = "acme") -> None:
    resp = api(
        custody,
        custody.keys["admin"] if tenant == "acme" else custody.keys[f"admin@{tenant}"],
        "POST",
        f"/api/v1/review-groups/{group}/members",
        json={"actor": actor},
    )
    assert resp.status_code == 200, resp.text


def decide(
    custody: RunningCustody,
    key: str,
    task: ReviewTask,
    decision: str = "approve",
    comment: str = "looks right",
    shown_digest: str | None = None,
) -> httpx.Response:
    return api(
        custody,
        key,
        "POST",
        f"/api/v1/reviews/{task.task_id}/decision",
        json={
            "decision": decision,
            "comment": comment,
            "shown_digest": shown_digest or task.shown_digest,
        },
    )


def reason_of(resp: httpx.Response) -> str:
    return str(resp.json()["error"]["details"][0]["reason"])
