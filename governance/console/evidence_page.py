"""The "evidence bundles" page (auditors, admins, operators): export a session's or a turn's
evidence as a bundle anyone can verify offline, and download the bundles already made.

The export is the one ``POST /api/v1/evidence/bundles`` makes (``evidence_routes.make_bundle``),
with the same tenant walls, time window (``since``/``until``: ISO 8601 or milliseconds) and
refusals, recorded as ``request.refused`` and shown on the page; a download is the same file
``GET /api/v1/evidence/bundles/{id}`` serves, to the same people.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.evidence_routes import (
    BundleRequest,
    bundles_of,
    find_bundle,
    make_bundle,
    refused,
)
from governance.console.nav import NAV, READER_ROLES, NavEntry
from governance.console.web import (
    ConsoleRefusal,
    ConsoleUser,
    checked_form,
    render,
    require_console,
)

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
_reader = require_console(*READER_ROLES)
NAV.append(NavEntry("/console/evidence", "Evidence", READER_ROLES))
DISCLOSURES = (
    ("none", "commitments only (nothing disclosed)"),
    ("prompts", "the prompts"),
    ("all", "everything: prompts, inputs, masks, requests, comments"),
)


async def _page(
    request: Request, user: ConsoleUser, *, status: int = 200, **context: object
) -> Response:
    services = get_services(request)
    bundles = await services.run_blocking(bundles_of, services, user.principal)
    return render(
        request,
        "evidence.html",
        user,
        status=status,
        title="Evidence bundles",
        bundles=bundles,
        disclosures=DISCLOSURES,
        log_key=services.ledger.signer.verifier_key(),
        **context,
    )


@router.get("/evidence")
async def evidence_form(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    return await _page(request, user, made=None, form={})


@router.post("/evidence")
async def evidence_export(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    form = await checked_form(request, user)
    names = ("session", "turn", "since", "until", "disclose", "tenant")
    fields = {k: str(form.get(k) or "").strip() for k in names}
    try:
        body = BundleRequest(
            session=fields["session"] or None,
            turn=fields["turn"] or None,
            since=fields["since"] or None,
            until=fields["until"] or None,
            disclose=fields["disclose"] or "none",
            tenant=fields["tenant"] or None,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem.get("loc", ())) or "the form"
        raise ConsoleRefusal(
            400, f"{where}: {problem['msg']}", "BAD_EVIDENCE_REQUEST", user=user
        ) from None
    try:
        made = await make_bundle(get_services(request), user.principal, body)
    except GeminiError as exc:
        await refused(request, user.principal, exc)
        return await _page(
            request, user, status=exc.code, made=None, error=exc.message, form=fields
        )
    return await _page(request, user, made=made, form=fields)


@router.get("/evidence/{bundle_id}/download")
async def evidence_download(
    request: Request,
    bundle_id: str,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    services = get_services(request)
    path = await services.run_blocking(find_bundle, services, user.principal, bundle_id)
    if path is None:
        raise ConsoleRefusal(
            404,
            f"There is no evidence bundle {bundle_id!r} of your tenant.",
            "NO_SUCH_BUNDLE",
            user=user,
        )
    return FileResponse(path, media_type="application/zip", filename=path.name)
