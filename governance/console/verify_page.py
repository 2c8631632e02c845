"""The "verify an image" page (auditors, admins, operators): upload a file, see its Content
Credentials, the approvals it carries and its record in the ledger.

The answer is the one ``POST /api/v1/verify`` gives (``verify_routes.verification``), with the
same tenant walls: another tenant's image says only that Custody released it. Approvals are
listed from the manifest's Custody assertion and from the record's ``review.*`` events.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.verify_routes import verification
from governance.console.nav import READER_ROLES
from governance.console.web import (
    ConsoleRefusal,
    ConsoleUser,
    checked_form,
    render,
    require_console,
)
from governance.provenance.lookup import NotYetCheckpointed

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
_reader = require_console(*READER_ROLES)


def _approvals(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Approvals in the manifest, then review decisions in the record."""
    out: list[dict[str, Any]] = []
    custody = (payload.get("c2pa") or {}).get("custody") or {}
    for approval in custody.get("approvals") or []:
        if isinstance(approval, dict):
            out.append({"source": "manifest", **approval})
    record = payload.get("ledger") or {}
    for event in record.get("events") or []:
        if str(event.get("type", "")).startswith("review."):
            body = event.get("body") or {}
            out.append(
                {
                    "source": f"ledger entry {event.get('index')}",
                    "event": event.get("type"),
                    "reviewer": body.get("reviewer") or event.get("actor"),
                    "decision": body.get("decision") or body.get("outcome") or "",
                    "time_ms": event.get("time_ms"),
                }
            )
    return out


@router.get("/verify")
async def verify_form(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    return render(request, "verify.html", user, title="Verify an image", result=None)


@router.post("/verify")
async def verify_upload(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    form = await checked_form(request, user, max_files=1)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ConsoleRefusal(
            400, "Choose an image file to verify.", "BAD_VERIFY_REQUEST", user=user
        )
    image = await upload.read()
    services = get_services(request)
    try:
        payload = await verification(
            services, user.principal, image, upload.content_type or "application/octet-stream"
        )
    except GeminiError as exc:
        raise ConsoleRefusal(exc.code, exc.message, exc.reason, user=user) from None
    except NotYetCheckpointed as exc:
        return render(
            request,
            "verify.html",
            user,
            status=503,
            title="Verify an image",
            result=None,
            error=f"{exc} Upload the file again in a few seconds.",
        )
    custody = (payload.get("c2pa") or {}).get("custody") or {}
    return render(
        request,
        "verify.html",
        user,
        title="Verify an image",
        filename=upload.filename or "upload",
        result=payload,
        custody=custody,
        custody_text=json.dumps(custody, indent=1, sort_keys=True)[:8000],
        approvals=_approvals(payload),
    )
