"""The ledger page (auditors, admins, operators): the latest signed checkpoint, the tree size, the
reader's recent events, and whether the ledger verifies.

Reuses what the native API reads (``Ledger.latest_checkpoint``, ``ledger_routes.entry_json``'s
tenant walls) and what ``custody ledger verify`` runs (``storage.ledger.verify.verify_ledger``).
Each page load checks the latest checkpoint itself — its Ed25519 signature under this log's key,
and its root against the tree stored for that size. A full verification recomputes every leaf and
is started from the page (one at a time per process); its last result is shown with when it ran
and by whom (the who only to that person's tenant and to operators). Only an operator sees a
fault's words (they may name another tenant's rows); a tenant's reader sees how many faults there
are and the first bad entry's index.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import text

from governance.api.deps import get_services
from governance.api.ledger_routes import entry_json
from governance.api.tenant_scope import INSTALLATION_TENANT, sees_tenant
from governance.auth.principal import Principal
from governance.console.nav import READER_ROLES
from governance.console.web import (
    SECURITY_HEADERS,
    ConsoleUser,
    checked_form,
    render,
    require_console,
)
from storage.ledger.checkpoint import CheckpointError, open_checkpoint
from storage.ledger.note import NoteVerifier
from storage.ledger.verify import verify_ledger

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
RECENT = 50
_reader = require_console(*READER_ROLES)


@dataclass(frozen=True)
class FullVerification:
    """The last full verification this process ran."""

    finished_ms: int
    seconds: float
    by: str
    by_tenant: str
    report: dict[str, Any]


def _recent_indexes(conn: Any, principal: Principal, limit: int) -> list[int]:
    if principal.is_operator:
        rows = conn.execute(
            text("SELECT idx FROM ledger_entries ORDER BY idx DESC LIMIT :n"), {"n": limit}
        )
    else:
        rows = conn.execute(
            text(
                "SELECT idx FROM ledger_entries WHERE tenant IN (:t, :all)"
                " ORDER BY idx DESC LIMIT :n"
            ),
            {"t": principal.tenant, "all": INSTALLATION_TENANT, "n": limit},
        )
    return [int(r[0]) for r in rows]


def _snapshot(request: Request, principal: Principal) -> dict[str, Any]:
    services = get_services(request)
    ledger = services.ledger
    cp = ledger.latest_checkpoint()
    size = ledger.size()
    try:
        opened = open_checkpoint(
            cp.note,
            NoteVerifier.from_key_string(services.ledger_verifier_key),
            services.settings.log_origin,
        )
        signature_ok = True
        root_ok = opened.size == cp.size and (cp.size == 0 or ledger.root(cp.size) == opened.root)
    except CheckpointError:
        signature_ok = root_ok = False
    with services.read_engine.connect() as conn:
        indexes = _recent_indexes(conn, principal, RECENT)
    events = []
    for index in indexes:
        shown = entry_json(ledger.entry(index), principal)
        event = shown.get("event")
        if isinstance(event, dict):
            shown["body_text"] = json.dumps(event.get("body", {}), indent=1, sort_keys=True)[:4000]
        events.append(shown)
    return {
        "size": size,
        "checkpoint": {
            "size": cp.size,
            "root": base64.b64encode(cp.root).decode(),
            "note": cp.note,
            "signature_ok": signature_ok,
            "root_ok": root_ok,
            "behind": size - cp.size,
        },
        "verifier_key": services.ledger_verifier_key,
        "events": events,
    }


def _verification_for(principal: Principal, last: FullVerification | None) -> dict[str, Any] | None:
    if last is None:
        return None
    report = dict(last.report)
    if not principal.is_operator:
        report["faults"] = []  # the count and first bad index stay; the words are the operator's
    return {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last.finished_ms / 1000)),
        "seconds": f"{last.seconds:.2f}",
        "by": last.by if sees_tenant(principal, last.by_tenant) else "someone of another tenant",
        "report": report,
        "fault_count": len(last.report.get("faults", [])),
    }


@router.get("/ledger")
async def ledger_page(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    services = get_services(request)
    snapshot = await services.run_blocking(_snapshot, request, user.principal)
    last = getattr(request.app.state, "console_verification", None)
    running = getattr(request.app.state, "console_verify_lock", None)
    return render(
        request,
        "ledger.html",
        user,
        title="Ledger",
        ledger=snapshot,
        verification=_verification_for(user.principal, last),
        verifying=bool(running and running.locked()),
        origin=services.settings.log_origin,
    )


@router.post("/ledger/verify")
async def verify_now(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
) -> Response:
    """Verify the whole ledger now (as ``custody ledger verify``), then back to the page."""
    await checked_form(request, user)
    services = get_services(request)
    state = request.app.state
    if getattr(state, "console_verify_lock", None) is None:
        state.console_verify_lock = asyncio.Lock()
    lock: asyncio.Lock = state.console_verify_lock
    if not lock.locked():  # one at a time; a second press waits for nothing and sees the result
        async with lock:
            started = time.perf_counter()
            report = await services.run_blocking(
                verify_ledger,
                services.engine,
                origin=services.settings.log_origin,
                verifier=NoteVerifier.from_key_string(services.ledger_verifier_key),
                commitments=services.content.commitments,
            )
            state.console_verification = FullVerification(
                finished_ms=int(time.time() * 1000),
                seconds=time.perf_counter() - started,
                by=f"{user.principal.actor} ({user.principal.tenant})",
                by_tenant=user.principal.tenant,
                report=report.to_dict(),
            )
    return RedirectResponse("/console/ledger", status_code=303, headers=SECURITY_HEADERS)
