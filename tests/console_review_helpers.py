"""Helpers for the console's review tests and screenshots: a held turn whose content is in the
store (prompt, photo, mask, held output), opened as the pipeline opens it (``ReviewDesk.open``,
like ``tests/review_helpers.open_task``), and reviewer accounts that are members of its group."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

from PIL import Image

from governance.review import HeldTurn, ReviewTask, Shown, desk_for
from tests.conftest import RunningCustody
from tests.console_helpers import make_account

PROMPT = "make the sofa teal"


def mask_for(photo: bytes) -> bytes:
    """A mask the size of ``photo``: white over its middle third, black elsewhere."""
    width, height = Image.open(io.BytesIO(photo)).size
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 3, height // 3, 2 * width // 3, 2 * height // 3))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


def open_shown_task(
    custody: RunningCustody,
    photo: bytes,
    *,
    requester: str = "editor@acme",
    tenant: str = "acme",
    stage: str = "response",
    prompt: str = PROMPT,
    output: bytes | None = None,
    **obligations: Any,
) -> ReviewTask:
    """A task whose prompt, input, mask and (stage ``response``) held output are stored as
    salted commitments, as the pipeline stores a turn's content."""
    commitments = desk_for(custody.services).commitments  # type: ignore[arg-type]
    request = uuid.uuid4().bytes + prompt.encode()
    req, text, image, mask = (
        commitments.put_committed(data).commitment
        for data in (request, prompt.encode(), photo, mask_for(photo))
    )
    outputs: tuple[str, ...] = ()
    if stage == "response":
        outputs = (commitments.put_committed(output or photo).commitment,)
    held = HeldTurn(
        tenant=tenant,
        turn_id=uuid.uuid4().hex,
        stage=stage,  # type: ignore[arg-type]
        requester=requester,
        request_hash=hashlib.sha256(request).hexdigest(),
        shown=Shown(request=req, prompt=text, inputs=(image,), masks=(mask,), outputs=outputs),
        reasons=("policy: an identifiable person is edited",),
    )
    return desk_for(custody.services).open(held, obligations)  # type: ignore[arg-type]


def make_reviewer(
    custody: RunningCustody, username: str, group: str = "brand", *, tenant: str = "acme",
    roles: tuple[str, ...] = ("reviewer",),
) -> None:  # fmt: skip
    """A console account holding ``roles`` that is a member of ``group`` (the account's groups
    are its review-desk memberships: creating it adds the membership)."""
    make_account(custody, username, *roles, tenant=tenant, groups=[group])


def decide_in_browser(
    page: Any, base_url: str, task_id: str, button: str, comment: str = ""
) -> None:
    """Open the task's page in a Playwright page and press approve / reject / request-changes."""
    page.goto(f"{base_url}/console/reviews/{task_id}")
    if comment:
        page.fill("textarea[name=comment]", comment)
    page.click(f"#{button}")
