"""Compliance queries over HTTP (auditors): turns, events, images by hash, proofs, prompt search.

Every route needs the ``auditor`` role (admins hold it) or ``operator``; an editor or reviewer
gets 403. The tenant wall: a tenant's auditor queries their own tenant only (naming another in
``tenant`` is a 403, never an empty answer that looks like "nothing happened"); the operator
names any tenant, or none for every tenant. A turn or image of another tenant is "not found".
Bad filters and cursors are a 400 in Gemini's envelope, saying what to change.

Prompt search reads private content, so it is a POST that records ``prompts.searched`` (who, a
commitment to the query, the filters, how many turns were read and matched) before answering.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import Response

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.ledger_routes import MAX_INDEX, not_yet_checkpointed
from governance.api.tenant_scope import may_sign_checkpoints, require_reader
from governance.auth.principal import Principal
from governance.compliance.oversight import (
    Period,
    PriceError,
    figures_csv,
    oversight_figures,
    parse_prices,
)
from governance.compliance.prompt_search import (
    commit_query,
    search_prompts,
    searched_event,
    searched_side_rows,
)
from governance.compliance.proofs import turn_proofs
from governance.compliance.queries import (
    DEFAULT_LIMIT,
    EventFilter,
    QueryError,
    TurnFilter,
    images_by_hash,
    query_events,
    query_turns,
)
from governance.compliance.record import (
    MissingFilter,
    RecordSources,
    compliance_record,
    missing_marking,
)
from governance.provenance.lookup import NotYetCheckpointed
from storage.blobs import Commitments

T = TypeVar("T")
router = APIRouter(prefix="/api/v1/query", tags=["compliance"])
oversight_router = APIRouter(prefix="/api/v1", tags=["compliance"])
DEFAULT_PERIOD_MS = 30 * 86_400_000


def bad_query(message: str) -> GeminiError:
    return GeminiError(400, message, reason="BAD_COMPLIANCE_QUERY")


def scoped_tenant(principal: Principal, asked: str | None) -> str | None:
    """The tenant a query may read: the caller's own; an operator's choice (None: all)."""
    if principal.is_operator:
        return asked or None
    if asked not in (None, "", principal.tenant):
        raise GeminiError(
            403,
            f"The key of {principal.actor!r} reads tenant {principal.tenant!r} only; it cannot"
            f" query tenant {asked!r}. Leave tenant out, or ask that tenant's auditor.",
            reason="TENANT_WALL",
        )
    return principal.tenant


def _time(name: str, value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_INDEX:
        raise bad_query(f"{name} must be milliseconds since 1970 from 0 to 2^62; got {value}.")
    return value


def turn_filter(principal: Principal, params: dict[str, Any]) -> TurnFilter:
    """A ``TurnFilter`` from query or body parameters, tenant-scoped; 400 on a bad one."""
    try:
        return TurnFilter(
            tenant=scoped_tenant(principal, params.get("tenant")),
            actor=params.get("actor"),
            session=params.get("session"),
            model=params.get("model"),
            status=params.get("status"),
            outcome=params.get("outcome"),
            policy=params.get("policy"),
            reviewer=params.get("reviewer"),
            stage=params.get("stage"),
            label=params.get("label"),
            since_ms=_time("since", params.get("since")),
            until_ms=_time("until", params.get("until")),
        )
    except QueryError as exc:
        raise bad_query(str(exc)) from exc


async def _answer(services: Any, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """``fn(*args, **kw)`` off the event loop; a ``QueryError`` is the caller's 400."""
    try:
        result: T = await services.run_blocking(fn, *args, **kw)
    except QueryError as exc:
        raise bad_query(str(exc)) from exc
    return result


@router.get("/turns")
async def turns(
    request: Request,
    tenant: str | None = Query(None),
    actor: str | None = Query(None),
    session: str | None = Query(None),
    model: str | None = Query(None),
    status: str | None = Query(None),
    outcome: str | None = Query(None),
    policy: str | None = Query(None),
    reviewer: str | None = Query(None),
    stage: str | None = Query(None),
    label: str | None = Query(None),
    since: int | None = Query(None),
    until: int | None = Query(None),
    cursor: str | None = Query(None),
    limit: int = Query(DEFAULT_LIMIT),
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any]:
    """Turns matching every filter given, newest first, each with its ledger indexes."""
    params = dict(
        tenant=tenant, actor=actor, session=session, model=model, status=status,
        outcome=outcome, policy=policy, reviewer=reviewer, stage=stage, label=label, since=since,
        until=until,
    )  # fmt: skip
    flt = turn_filter(principal, params)
    services = get_services(request)
    page = await _answer(
        services, query_turns, services.read_engine, flt, cursor=cursor, limit=limit
    )
    return page.to_dict()


@router.get("/events")
async def events(
    request: Request,
    tenant: str | None = Query(None),
    type: str | None = Query(None),
    turn: str | None = Query(None),
    actor: str | None = Query(None),
    session: str | None = Query(None),
    model: str | None = Query(None),
    reviewer: str | None = Query(None),
    label: str | None = Query(None),
    stage: str | None = Query(None),
    since: int | None = Query(None),
    until: int | None = Query(None),
    cursor: str | None = Query(None),
    limit: int = Query(DEFAULT_LIMIT),
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any]:
    """Ledger events matching every filter given, highest index first."""
    try:
        flt = EventFilter(
            tenant=scoped_tenant(principal, tenant),
            type=type,
            turn=turn,
            actor=actor,
            session=session,
            model=model,
            reviewer=reviewer,
            label=label,
            stage=stage,
            since_ms=_time("since", since),
            until_ms=_time("until", until),
        )
    except QueryError as exc:
        raise bad_query(str(exc)) from exc
    services = get_services(request)
    page = await _answer(
        services, query_events, services.read_engine, flt, cursor=cursor, limit=limit
    )
    return page.to_dict()


@router.get("/images/{sha256}")
async def image(
    request: Request,
    sha256: str,
    tenant: str | None = Query(None),
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any]:
    """Every recorded input or output with this SHA-256 (upstream's or signed), newest first."""
    scope = scoped_tenant(principal, tenant)
    services = get_services(request)
    rows = await _answer(
        services, images_by_hash, services.read_engine, sha256.lower(), tenant=scope
    )
    return {"sha256": sha256.lower(), "rows": rows, "count": len(rows)}


@router.get("/turns/{turn_id}/proof", response_model=None)
async def proof(
    request: Request,
    turn_id: str,
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any] | Response:
    """Every entry of the turn with its RFC 6962 inclusion proof against the latest checkpoint."""
    services = get_services(request)
    scope = None if principal.is_operator else principal.tenant
    try:
        found = await services.run_blocking(
            turn_proofs,
            services.ledger,
            turn_id,
            tenant=scope,
            may_sign=may_sign_checkpoints(principal),
        )
    except NotYetCheckpointed as exc:
        return not_yet_checkpointed(exc)
    if found is None:
        raise GeminiError(
            404,
            f"No turn {turn_id!r} in the records this key may read (its own tenant's).",
            status="NOT_FOUND",
            reason="NO_SUCH_TURN",
        )
    return found


@router.post("/prompts")
async def prompts(
    request: Request,
    body: dict[str, Any] = Body(...),  # noqa: B008
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any]:
    """Turns whose prompt contains ``query``; the search itself is recorded first."""
    text = body.get("query")
    if not isinstance(text, str):
        raise bad_query('Send {"query": "text to find", ...filters}: query must be a string.')
    allowed = {"query", "tenant", "actor", "session", "model", "status", "outcome", "policy",
               "reviewer", "stage", "label", "since", "until", "cursor", "limit",
               "scan"}  # fmt: skip
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_query(f"unknown fields {unknown}; the body may hold {sorted(allowed)}.")
    for name in ("since", "until", "limit", "scan"):
        if body.get(name) is not None and not isinstance(body[name], int):
            raise bad_query(f"{name} must be an integer; got {body[name]!r}.")
    flt = turn_filter(principal, body)
    services = get_services(request)
    commitments = Commitments(services.engine, services.blobs)
    scan = body.get("scan") or services.settings.prompt_search_scan
    if not 1 <= scan <= services.settings.prompt_search_scan:
        raise bad_query(f"scan must be from 1 to {services.settings.prompt_search_scan}.")
    found = await _answer(
        services,
        search_prompts,
        services.read_engine,
        commitments,
        flt,
        text,
        cursor=body.get("cursor"),
        limit=body.get("limit") or DEFAULT_LIMIT,
        scan=scan,
    )
    query = await services.run_blocking(commit_query, services.blobs, text)
    event = searched_event(
        tenant=flt.tenant or "*",
        actor=principal.actor,
        query=query,
        query_chars=len(text),
        flt=flt,
        found=found,
    )
    entries = await services.run_blocking(
        services.ledger.append, [event], [searched_side_rows(commitments, query)]
    )
    return {
        **found.page.to_dict(),
        "scanned": found.scanned,
        "recorded_as": {
            "index": entries[0].index,
            "leaf_hash": base64.b64encode(entries[0].leaf_hash).decode(),
        },
    }


def _record_sources(request: Request) -> RecordSources:
    services = get_services(request)
    return RecordSources(
        engine=services.read_engine,
        ledger=services.ledger,
        commitments=Commitments(services.engine, services.blobs),
        anchors_pem=services.signer.trust_anchors_pem(),
    )


@router.get("/outputs/missing-marking")
async def outputs_missing_marking(
    request: Request,
    tenant: str | None = Query(None),
    since: int | None = Query(None),
    until: int | None = Query(None),
    cursor: str | None = Query(None),
    limit: int = Query(DEFAULT_LIMIT),
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any]:
    """Released outputs lacking any required marking, newest first (``limit`` read per call)."""
    flt = MissingFilter(
        tenant=scoped_tenant(principal, tenant),
        since_ms=_time("since", since),
        until_ms=_time("until", until),
    )
    services = get_services(request)
    page = await _answer(
        services, missing_marking, _record_sources(request), flt, cursor=cursor, limit=limit
    )
    return page.to_dict()


@router.get("/outputs/{sha256}/record")
async def output_record(
    request: Request,
    sha256: str,
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any]:
    """The compliance record of one output: its marking, SB 942 fields and AI Act category."""
    scope = None if principal.is_operator else principal.tenant
    services = get_services(request)
    found = await _answer(
        services, compliance_record, _record_sources(request), sha256.lower(), tenant=scope
    )
    if found is None:
        raise GeminiError(
            404,
            "No released output with this SHA-256 in the records this key may read (its own"
            " tenant's). Send the signed file's hash or the upstream image's.",
            status="NOT_FOUND",
            reason="NO_SUCH_OUTPUT",
        )
    return found


async def oversight_of(
    request: Request,
    principal: Principal,
    *,
    tenant: str | None,
    since: int | None,
    until: int | None,
) -> dict[str, Any]:
    """The oversight figures the caller may see (the console's dashboard shows the same)."""
    scope = scoped_tenant(principal, tenant)
    until = _time("until", until) or int(time.time() * 1000)
    since = _time("since", since)
    since = until - DEFAULT_PERIOD_MS if since is None else since
    if until < since:
        raise bad_query(f"until ({until}) is before since ({since}).")
    services = get_services(request)
    try:
        prices = parse_prices(services.settings.model_prices)
    except PriceError as exc:
        raise GeminiError(500, f"{exc}: ask your Custody operator to fix it.") from exc
    return await services.run_blocking(
        oversight_figures,
        services.read_engine,
        Period(scope, since, until),
        rubber_stamp_ms=services.settings.rubber_stamp_ms,
        prices=prices,
    )


@oversight_router.get("/oversight", response_model=None)
async def oversight(
    request: Request,
    tenant: str | None = Query(None),
    since: int | None = Query(None),
    until: int | None = Query(None),
    format: str = Query("json"),
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, Any] | Response:
    """Oversight figures of a tenant over ``[since, until)`` (default: the last 30 days)."""
    if format not in ("json", "csv"):
        raise bad_query(f"format must be json or csv; got {format!r}.")
    figures = await oversight_of(request, principal, tenant=tenant, since=since, until=until)
    if format == "csv":
        name = f"custody-oversight-{figures['tenant'] or 'all'}-{figures['since_ms']}.csv"
        return Response(
            figures_csv(figures),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    return figures
