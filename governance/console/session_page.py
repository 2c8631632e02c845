"""A session's page (``/console/sessions/{id}``): each image's version graph as thumbnails.

Versions are drawn as a tree per image — the upload at the root, each edit under its parent, a
branch as two children of one version — with their kind, labels, the turn that made them and who
ran it; below, the session's turns in the order they closed (targets, outputs, intent, status).
It reads what ``GET /api/v1/sessions/{id}`` returns (``governance.sessions.graph``) with the same
walls: the tenant's reviewers and auditors (admins hold both) and the operator. Thumbnails come
from ``/console/sessions/{id}/versions/{v}/content``, which checks the same and streams the
version's bytes only while its commitment still opens. The review task page links here.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from governance.api.deps import get_services
from governance.api.tenant_scope import sees_tenant
from governance.console.nav import CONSOLE_ROLES
from governance.console.review_common import absolute
from governance.console.web import ConsoleRefusal, ConsoleUser, render, require_console
from governance.sessions import graph_from_rows

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
_reader = require_console(*CONSOLE_ROLES)
_ID = re.compile(r"^(ses|ver)_[0-9a-f]{24}$")


def _not_found(user: ConsoleUser, what: str) -> ConsoleRefusal:
    return ConsoleRefusal(
        404, f"No {what} that your account may see.", "SESSION_NOT_FOUND", user=user
    )


async def _visible(request: Request, user: ConsoleUser, session_id: str) -> dict[str, Any]:
    services = get_services(request)
    row = None
    if _ID.match(session_id):
        row = await services.run_blocking(services.sessions.session, session_id)
    if row is None or not sees_tenant(user.principal, row["tenant"]):
        raise _not_found(user, f"session {session_id[:64]!r}")
    return row


def _trees(graph: dict[str, Any], rows: dict[str, Any], sid: str) -> list[dict[str, Any]]:
    """One tree per image: nodes with their children, labels, turn and who."""
    labels: dict[str, list[str]] = {}
    for lab in graph["labels"]:
        labels.setdefault(lab["version"], []).append(lab["label"])
    actors = {t["turn_id"]: t["actor"] for t in rows["turns"]}
    created = {v["version_id"]: v["created_ms"] for v in rows["versions"]}
    nodes = {
        v["version"]: {
            **v,
            "labels": labels.get(v["version"], []),
            "by": actors.get(v["turn"] or "", graph["actor"]),
            "when": absolute(created[v["version"]]),
            "url": f"/console/sessions/{sid}/versions/{v['version']}/content",
            "children": [],
        }
        for v in graph["versions"]
    }
    ordered = sorted(nodes.values(), key=lambda n: (created[n["version"]], n["version"]))
    roots: dict[str, list[dict[str, Any]]] = {}
    for node in ordered:
        parent = nodes.get(node["parent"] or "")
        if parent is not None:
            parent["children"].append(node)
        else:
            roots.setdefault(node["image"], []).append(node)
    return [{"image": image, "roots": roots.get(image["image"], [])} for image in graph["images"]]


@router.get("/sessions/{session_id}")
async def session_page(
    request: Request,
    session_id: str,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    session = await _visible(request, user, session_id)
    services = get_services(request)
    rows = await services.run_blocking(services.sessions.graph_rows, session_id)
    graph = graph_from_rows(session, rows)
    when = {t["turn_id"]: t for t in rows["turns"]}
    turns = sorted(graph["turns"], key=lambda t: (when[t["turn"]]["created_ms"], t["turn"]))
    return render(
        request,
        "session.html",
        user,
        title=f"Session {session_id[:12]}",
        session=session,
        created=absolute(session["created_ms"]),
        trees=_trees(graph, rows, session_id),
        turns=[
            {
                **t,
                "by": when[t["turn"]]["actor"],
                "when": absolute(when[t["turn"]]["created_ms"]),
                "error": when[t["turn"]]["error"],
            }
            for t in turns
        ],
    )


@router.get("/sessions/{session_id}/versions/{version_id}/content")
async def version_content(
    request: Request,
    session_id: str,
    version_id: str,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    """One version's bytes (a thumbnail on the page), for a person who may read the session."""
    await _visible(request, user, session_id)
    services = get_services(request)
    row = await services.run_blocking(services.sessions.version, version_id)
    if row is None or row["session_id"] != session_id:
        raise _not_found(user, f"version {version_id[:64]!r} in this session")
    data = await services.run_blocking(services.commitments.open, row["commitment"])
    if data is None:
        raise ConsoleRefusal(404, "This version's content was erased.", "CONTENT_GONE", user=user)
    return Response(
        data, media_type=row["mime_type"], headers={"Cache-Control": "private, no-store"}
    )


@router.get("/sessions/{session_id}/authorship")
async def authorship_report(
    request: Request,
    session_id: str,
    format: str = "html",
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    """The session's authorship report (``governance.authorship``) as a page or a PDF download,
    for a person who may read the session."""
    from governance.authorship import build_report
    from governance.authorship.render import to_html, to_pdf

    session = await _visible(request, user, session_id)
    if format not in ("html", "pdf"):
        raise ConsoleRefusal(400, "format is html or pdf.", "BAD_AUTHORSHIP_REQUEST", user=user)
    services = get_services(request)
    report = await services.run_blocking(
        build_report, services.ledger, services.sessions, services.commitments, session
    )
    base = str(request.base_url).rstrip("/")
    if format == "pdf":
        pdf = await services.run_blocking(to_pdf, report, base)
        return Response(
            pdf,
            media_type="application/pdf",
            headers={
                "content-disposition": f'attachment; filename="authorship-{session_id}.pdf"',
                "Cache-Control": "private, no-store",
            },
        )
    html = await services.run_blocking(to_html, report, base)
    return Response(html, media_type="text/html", headers={"Cache-Control": "private, no-store"})
