"""``GET /api/v1/sessions/{id}/authorship``: a session's authorship report as JSON, HTML or PDF.

Who may read it: whoever may read the session (its owner; the tenant's reviewers and auditors;
the operator), as the session read routes decide; another tenant's session is 404. Prompts and
masks are opened and thumbnails shown (those readers may read the versions' content anyway)
unless ``content=commitments`` asks for a report that shows commitments only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from governance.api.deps import get_services
from governance.api.session_routes import Caller, _bad, _refuse, _session
from governance.authorship import AuthorshipError, build_report
from governance.authorship.render import to_html, to_pdf
from governance.pipeline.errors import TurnError

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])
FORMATS = ("json", "html", "pdf")
CONTENT = ("opened", "commitments")


@router.get("/{session_id}/authorship", response_model=None)
async def authorship(
    request: Request,
    principal: Caller,
    session_id: str,
    format: str = "json",
    version: str | None = None,
    content: str = "opened",
) -> Any:
    """The session's authorship report; ``version`` names the final version (default: the
    newest)."""
    session = await _session(request, principal, session_id, write=False)
    if format not in FORMATS or content not in CONTENT:
        raise await _refuse(
            request,
            principal,
            _bad(
                f"format must be one of {', '.join(FORMATS)} and content one of"
                f" {', '.join(CONTENT)}; got format={format[:16]!r}, content={content[:16]!r}.",
                "BAD_AUTHORSHIP_REQUEST",
            ),
        )
    services = get_services(request)
    try:
        report = await services.run_blocking(
            lambda: build_report(
                services.ledger,
                services.sessions,
                services.commitments,
                session,
                version=version,
                open_content=content == "opened",
            )
        )
    except AuthorshipError as exc:
        raise await _refuse(
            request, principal, TurnError(404, str(exc), reason="VERSION_NOT_FOUND")
        ) from None
    base = str(request.base_url).rstrip("/")
    if format == "html":
        return HTMLResponse(await services.run_blocking(to_html, report, base))
    if format == "pdf":
        pdf = await services.run_blocking(to_pdf, report, base)
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"content-disposition": f'attachment; filename="authorship-{session_id}.pdf"'},
        )
    return report
