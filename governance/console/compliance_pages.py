"""The console's compliance pages (auditors, admins, operators): queries and oversight.

``/console/queries`` is a filter form over ``governance.compliance.queries.query_turns`` with a
paged table (``?kind=events``: over ``query_events``, with the event filters and stages); each
row links to ``/console/queries/turns/{id}/proof``, which shows that turn's
entries with their RFC 6962 inclusion proofs checked against the latest signed checkpoint.
``/console/oversight`` shows ``governance.compliance.oversight`` figures with inline SVG charts
(no script, no CDN: the console's CSP allows neither) and offers them as CSV and JSON downloads
(``?format=csv|json``). The tenant walls and the bad-input answers are those of the native API
(``governance.api.compliance_routes``), turned into HTML refusals.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from governance.api.compliance_routes import oversight_of, scoped_tenant, turn_filter
from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.tenant_scope import may_sign_checkpoints
from governance.compliance.oversight import figures_csv
from governance.compliance.proofs import turn_proofs
from governance.compliance.queries import EventFilter, QueryError, query_events, query_turns
from governance.console.nav import NAV, READER_ROLES, NavEntry
from governance.console.web import (
    SECURITY_HEADERS,
    ConsoleRefusal,
    ConsoleUser,
    render,
    require_console,
)
from governance.ledger_vocabulary import EVENT_STAGES
from governance.provenance.lookup import NotYetCheckpointed

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
_reader = require_console(*READER_ROLES)
NAV.append(NavEntry("/console/queries", "Queries", READER_ROLES))
NAV.append(NavEntry("/console/oversight", "Oversight", READER_ROLES))

FILTERS = ("actor", "session", "model", "status", "outcome", "policy", "reviewer", "stage", "label")
EVENT_FILTERS = ("type", "turn", "actor", "session", "model", "reviewer", "label", "stage")
PAGE = 25


def _int(name: str, value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConsoleRefusal(
            400, f"{name} must be whole milliseconds since 1970.", "BAD_QUERY"
        ) from None


@router.get("/queries")
async def queries_page(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    q = request.query_params
    kind = q.get("kind") or "turns"
    if kind not in ("turns", "events"):
        raise ConsoleRefusal(400, "kind must be turns or events.", "BAD_QUERY", user=user)
    names = FILTERS if kind == "turns" else EVENT_FILTERS
    params: dict[str, Any] = {name: q.get(name) or None for name in names}
    params.update(since=_int("since", q.get("since")), until=_int("until", q.get("until")))
    services = get_services(request)
    cursor = q.get("cursor") or None
    try:
        if kind == "turns":
            page = await services.run_blocking(
                query_turns,
                services.read_engine,
                turn_filter(user.principal, params),
                cursor=cursor,
                limit=PAGE,
            )
        else:
            page = await services.run_blocking(
                query_events,
                services.read_engine,
                _event_filter(user.principal, params),
                cursor=cursor,
                limit=PAGE,
            )
    except GeminiError as exc:
        raise ConsoleRefusal(exc.code, exc.message, exc.reason, user=user) from None
    except QueryError as exc:
        raise ConsoleRefusal(400, str(exc), "BAD_QUERY", user=user) from None
    kept = {k: v for k, v in {**params}.items() if v is not None}
    return render(
        request,
        "queries.html",
        user,
        title="Queries",
        kind=kind,
        filters=kept,
        event_stages=tuple(EVENT_STAGES),
        rows=page.rows,
        next_query=(
            {**kept, "kind": kind, "cursor": page.next_cursor} if page.next_cursor else None
        ),
    )


def _event_filter(principal: Any, params: dict[str, Any]) -> EventFilter:
    """The ``EventFilter`` of the page's parameters, within the caller's tenant (as the API's)."""
    named = {k: v for k, v in params.items() if k not in ("since", "until")}
    return EventFilter(
        tenant=scoped_tenant(principal, None),
        since_ms=params["since"],
        until_ms=params["until"],
        **named,
    )


@router.get("/queries/turns/{turn_id}/proof")
async def proof_page(
    request: Request,
    turn_id: str,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    services = get_services(request)
    principal = user.principal
    try:
        found = await services.run_blocking(
            turn_proofs,
            services.ledger,
            turn_id,
            tenant=None if principal.is_operator else principal.tenant,
            may_sign=may_sign_checkpoints(principal),
        )
    except NotYetCheckpointed as exc:
        return render(request, "proof.html", user, title="Proof", pending=str(exc), refresh_s=2)
    if found is None:
        raise ConsoleRefusal(
            404, "No such turn in the records you may read.", "NO_SUCH_TURN", user=user
        )
    return render(request, "proof.html", user, title="Proof", proof=found, pending=None)


def _bar_chart(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars per day (allow, review, deny), scaled to a 600 × 160 viewBox."""
    width, height = 600, 160
    top = max((d["turns"] for d in series), default=0) or 1
    step = width / max(len(series), 1)
    bars = []
    for i, day in enumerate(series):
        y = float(height)
        for kind in ("allow", "review", "deny"):
            h = day[kind] / top * (height - 10)
            y -= h
            bars.append(
                {
                    "x": round(i * step + 2, 1),
                    "y": round(y, 1),
                    "w": round(max(step - 4, 1), 1),
                    "h": round(h, 1),
                    "kind": kind,
                    "title": f"{kind}: {day[kind]}",
                }
            )
    return {"width": width, "height": height, "bars": bars, "top": top}


def _rate_bars(figures: dict[str, Any]) -> list[dict[str, Any]]:
    rates = [
        ("allowed", figures["policy"]["allow_rate"]),
        ("denied", figures["policy"]["deny_rate"]),
        ("held for review", figures["policy"]["review_rate"]),
        ("reviews approved", figures["reviews"]["approve_rate"]),
        ("rubber stamps", figures["reviews"]["rubber_stamp_rate"]),
    ]
    return [{"label": name, "rate": r or 0.0, "w": round((r or 0.0) * 400, 1)} for name, r in rates]


def _download(body: str, media_type: str, filename: str) -> Response:
    """The figures as a file download, under the console's security headers."""
    headers = {**SECURITY_HEADERS, "content-disposition": f'attachment; filename="{filename}"'}
    return Response(body, media_type=media_type, headers=headers)


@router.get("/oversight")
async def oversight_page(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    q = request.query_params
    try:
        figures = await oversight_of(
            request,
            user.principal,
            tenant=q.get("tenant") or None,
            since=_int("since", q.get("since")),
            until=_int("until", q.get("until")),
        )
    except GeminiError as exc:
        raise ConsoleRefusal(exc.code, exc.message, exc.reason, user=user) from None
    fmt = q.get("format", "html")
    name = f"custody-oversight-{figures['tenant'] or 'all'}-{figures['since_ms']}"
    if fmt == "csv":
        return _download(figures_csv(figures), "text/csv; charset=utf-8", f"{name}.csv")
    if fmt == "json":
        return _download(json.dumps(figures, indent=2), "application/json", f"{name}.json")
    if fmt != "html":
        raise ConsoleRefusal(400, "format must be html, csv or json.", "BAD_QUERY", user=user)
    period = {k: v for k, v in (("since", figures["since_ms"]), ("until", figures["until_ms"]))}
    return render(
        request,
        "oversight.html",
        user,
        title="Oversight",
        figures=figures,
        chart=_bar_chart(figures["series"]),
        rates=_rate_bars(figures),
        period=period,
    )
