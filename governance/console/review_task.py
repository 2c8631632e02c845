"""A review task's page (``/console/reviews/{id}``), its claim and decision forms, and its images.

The page shows what ``GET /api/v1/reviews/{id}`` returns (``ReviewTask.to_json``), plus the
content the task's ``shown`` names as far as the content store still holds it: the prompt's text,
the inputs and held outputs side by side, each mask laid over its image (CSS opacity, no script).
Images come from ``/console/reviews/{id}/content/{kind}/{n}``, which checks the person's role and
tenant like the page and streams the stored blob only when it still matches the digest or
commitment the task names: nothing is served from a public URL.

The forms post to routes that call the same ``ReviewDesk.claim`` / ``ReviewDesk.decide`` as
``POST /api/v1/reviews/{id}/claim`` and ``/decision`` — one rule set. The decision form carries
the task's ``shown_digest`` as the page displayed it, so the decision commits to exactly what the
reviewer saw; a task that changed since is refused (``SHOWN_MISMATCH``). Every refusal — own
turn, not in the group, already decided, claimed by another, closed, digest mismatch, an auditor
posting — is the desk's status and words on the refusal page, recorded as ``review.refused``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from governance.api.deps import get_services
from governance.auth.keys import now_ms
from governance.console.review_common import (
    QUEUE_ROLES,
    absolute,
    own_groups,
    refuse,
    relative,
    require_decider,
    visible_task,
)
from governance.console.web import (
    SECURITY_HEADERS,
    ConsoleUser,
    checked_form,
    render,
    require_console,
)
from governance.review import ReviewError, ReviewTask, desk_for
from storage.blobs import Commitments

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
KINDS = ("inputs", "masks", "outputs")
DONE = {
    "claimed": "You claimed this task: other reviewers cannot claim or decide it for 15 minutes.",
    "approve": "Your approval is recorded.",
    "reject": "Your rejection is recorded; the requester is told your comment.",
    "request_changes": "Your request for changes is recorded; the requester is told your comment.",
}
_reader = require_console(*QUEUE_ROLES)
_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def open_reference(commitments: Commitments, reference: str) -> bytes | None:
    """The bytes a ``shown`` reference names while the store holds them unchanged: a salted
    commitment is opened (None once erased); a plain SHA-256 digest is read and re-hashed."""
    if reference.startswith("salted-sha256:"):
        return commitments.open(reference)
    data = commitments.blobs.get(reference)
    if data is None or hashlib.sha256(data).hexdigest() != reference:
        return None
    return data


def image_type(data: bytes) -> str | None:
    for magic, mime in _IMAGE_TYPES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _content(commitments: Commitments, task: ReviewTask) -> dict[str, Any]:
    """The prompt's text and which images remain, as the page shows them."""
    shown = task.shown
    prompt = None
    if shown.get("prompt"):
        raw = open_reference(commitments, shown["prompt"])
        prompt = None if raw is None else raw.decode("utf-8", errors="replace")
    images: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        images[kind] = []
        for n, reference in enumerate(shown.get(kind) or []):
            data = open_reference(commitments, reference)
            images[kind].append(
                {
                    "url": f"/console/reviews/{task.task_id}/content/{kind}/{n}",
                    "reference": reference,
                    "available": data is not None and image_type(data) is not None,
                }
            )
    inputs = images["inputs"]
    overlays = [
        {"mask": mask, "base": inputs[min(n, len(inputs) - 1)] if inputs else None}
        for n, mask in enumerate(images["masks"])
    ]
    return {"prompt": prompt, "images": images, "overlays": overlays}


def _warnings(task: ReviewTask, user: ConsoleUser, mine: set[str], now: int) -> list[str]:
    """What the desk would refuse, said before the person tries (the desk still decides)."""
    actor = user.principal.actor
    out = []
    if not task.is_open:
        out.append(f"This task is closed ({task.status}); nothing more can be decided on it.")
        return out
    if task.requester == actor:
        out.append(
            "You requested this turn: separation of duties means another member of the group"
            " decides it."
        )
    if task.reviewer_group not in mine:
        out.append(f"You are not a member of the group {task.reviewer_group!r} of this task.")
    if any(d.reviewer == actor for d in task.decisions):
        out.append("You have already decided this task; one reviewer counts once.")
    if task.claimed_by and task.claimed_by != actor and (task.claimed_until_ms or 0) > now:
        until = task.claimed_until_ms or 0
        out.append(
            f"{task.claimed_by} has claimed this task until {absolute(until)}"
            f" ({relative(until, now)})."
        )
    return out


@router.get("/reviews/{task_id}")
async def task_page(
    request: Request,
    task_id: str,
    done: str = "",
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    task = await visible_task(request, user, task_id, "read")
    services = get_services(request)
    desk = desk_for(services)
    content = await services.run_blocking(_content, desk.commitments, task)
    mine = await services.run_blocking(own_groups, request, user)
    now = now_ms()
    principal = user.principal
    decisions = [{**d.to_json(), "when": absolute(d.time_ms)} for d in task.decisions]
    claimed = bool(task.claimed_by and (task.claimed_until_ms or 0) > now)
    return render(
        request,
        "review_task.html",
        user,
        title=f"Review {task.task_id[:8]}",
        task=task,
        doc=task.to_json(with_decisions=True),
        decisions=decisions,
        due_relative=relative(task.deadline_ms, now),
        due_absolute=absolute(task.deadline_ms),
        created=absolute(task.created_ms),
        claimed=claimed,
        claimed_until=absolute(task.claimed_until_ms) if claimed and task.claimed_until_ms else "",
        can_decide=principal.has_role("reviewer") and task.is_open,
        warnings=_warnings(task, user, mine, now) if principal.has_role("reviewer") else [],
        done=DONE.get(done, ""),
        **content,
    )


@router.get("/reviews/{task_id}/content/{kind}/{index}")
async def task_content(
    request: Request,
    task_id: str,
    kind: str,
    index: int,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    """One image the task shows, streamed from the store for a person who may read the task."""
    task = await visible_task(request, user, task_id, "content")
    references = task.shown.get(kind) if kind in KINDS else None
    if not references or not 0 <= index < len(references):
        err = ReviewError(
            404, f"This task shows no {kind[:16]!r} image number {index}.", "CONTENT_NOT_FOUND"
        )
        raise await refuse(request, user, "content", task.task_id, err)
    services = get_services(request)
    data = await services.run_blocking(
        open_reference, desk_for(services).commitments, references[index]
    )
    mime = image_type(data) if data is not None else None
    if data is None or mime is None:
        err = ReviewError(
            404,
            "This image is no longer in the content store (erased, or never stored here); the"
            " task's digest of it stands.",
            "CONTENT_GONE",
        )
        raise await refuse(request, user, "content", task.task_id, err)
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'inline; filename="{kind}-{index}"'}
    return Response(data, media_type=mime, headers=headers)


@router.post("/reviews/{task_id}/claim")
async def claim(
    request: Request,
    task_id: str,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    """Claim the task (``ReviewDesk.claim``, as ``POST /api/v1/reviews/{id}/claim``)."""
    await require_decider(request, user, "claim", task_id[:64])
    await checked_form(request, user)
    task = await visible_task(request, user, task_id, "claim")
    services = get_services(request)
    try:
        await services.run_blocking(desk_for(services).claim, task.task_id, user.principal)
    except ReviewError as err:
        raise await refuse(request, user, "claim", task.task_id, err) from None
    return _back(task.task_id, "claimed")


@router.post("/reviews/{task_id}/decision")
async def decide(
    request: Request,
    task_id: str,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    """Approve, reject or request changes (``ReviewDesk.decide``, as ``POST
    /api/v1/reviews/{id}/decision``), on the ``shown_digest`` the page displayed."""
    await require_decider(request, user, "decide", task_id[:64])
    form = await checked_form(request, user)
    task = await visible_task(request, user, task_id, "decide")
    decision, comment, shown = (_field(form, n) for n in ("decision", "comment", "shown_digest"))
    services = get_services(request)
    try:
        await services.run_blocking(
            desk_for(services).decide, task.task_id, user.principal, decision, comment, shown
        )
    except ReviewError as err:
        raise await refuse(request, user, "decide", task.task_id, err) from None
    return _back(task.task_id, decision)


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _back(task_id: str, done: str) -> Response:
    return RedirectResponse(
        f"/console/reviews/{task_id}?done={done}", status_code=303, headers=SECURITY_HEADERS
    )
