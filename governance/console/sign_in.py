"""Signing in and out of the console, its overview page and its stylesheet.

The sign-in form is protected by a double-submit token (a random cookie that the form must
repeat), its attempts throttled per client address (``throttle``) and per account (on the
account's row). Every attempt is recorded: ``console.signed_in`` or ``console.sign_in_failed``
(the reason, and which account when the name matched one — a name that matched none is recorded
only by its length: people type passwords into the username field). An account that holds no
console role (an editor's) is refused after its password was checked. Sign-out ends the session
in the database (``console.signed_out``), not only in the browser.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from governance.accounts.store import Account, AccountError, Accounts, check_name
from governance.api.deps import get_services
from governance.api.tenant_scope import INSTALLATION_TENANT
from governance.auth.principal import ROLES
from governance.console.nav import CONSOLE_ROLES
from governance.console.sessions import csrf_matches
from governance.console.throttle import ClientThrottle
from governance.console.web import (
    COOKIE,
    COOKIE_PATH,
    SECURITY_HEADERS,
    SIGN_IN_CSRF_COOKIE,
    ConsoleUser,
    checked_form,
    cookie_secure,
    current_user,
    read_form,
    render,
    require_console,
    sessions_of,
)
from governance.ledger_vocabulary import ledger_event
from storage.ledger.events import LedgerEvent

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
STATIC = Path(__file__).resolve().parent / "static"
HOME = "/console/"
MAX_FIELD = 256


def _throttle(request: Request) -> ClientThrottle:
    state = request.app.state
    if getattr(state, "console_throttle", None) is None:
        per_minute = get_services(request).settings.console_sign_in_per_client
        state.console_throttle = ClientThrottle(per_minute)
    throttle: ClientThrottle = state.console_throttle
    return throttle


def _next_path(value: object) -> str:
    """Where to go after signing in: a console page of this site, never another origin."""
    path = value if isinstance(value, str) else ""
    if not path.startswith(COOKIE_PATH + "/") or path.startswith("//") or "\\" in path:
        return HOME
    if path.startswith("/console/sign-"):
        return HOME
    return path[:1024]


def _sign_in_page(
    request: Request, *, status: int = 200, error: str = "", tenant: str = "", username: str = ""
) -> Response:
    token = request.cookies.get(SIGN_IN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(
        request,
        "sign_in.html",
        None,
        status=status,
        title="Sign in",
        sign_in_csrf=token,
        error=error,
        tenant=tenant,
        username=username,
        next=_next_path(request.query_params.get("next") or ""),
    )
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request),
    )
    return response


@router.get("/sign-in")
async def sign_in_form(request: Request) -> Response:
    return _sign_in_page(request)


def _failed(tenant: str, account: Account | None, typed_username: str, reason: str) -> LedgerEvent:
    if account is not None:
        return ledger_event(
            "console.sign_in_failed",
            {"account": account.summary(), "reason": reason},
            tenant=account.tenant,
            actor=account.username,
        )
    try:
        recorded_tenant = check_name("The tenant", tenant)
    except AccountError:
        recorded_tenant = INSTALLATION_TENANT
    return ledger_event(
        "console.sign_in_failed",
        {"account": None, "reason": reason, "username_chars": len(typed_username)},
        tenant=recorded_tenant,
        actor="unknown",
    )


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    services = get_services(request)
    form = await read_form(request)
    presented = form.get("csrf")
    if not isinstance(presented, str) or not csrf_matches(
        request.cookies.get(SIGN_IN_CSRF_COOKIE, ""), presented
    ):
        return _sign_in_page(
            request,
            status=403,
            error="The sign-in form expired or was not sent from this page; sign in again.",
        )
    tenant = str(form.get("tenant") or "").strip()[:MAX_FIELD]
    username = str(form.get("username") or "").strip()[:MAX_FIELD]
    password = str(form.get("password") or "")
    client = request.client.host if request.client else "-"
    wait, first = _throttle(request).admit(client)
    if wait:
        if first:  # once per window: a flood of attempts is not a flood of leaves
            await services.run_blocking(
                services.ledger.append, [_failed(tenant, None, username, "client_throttled")]
            )
        return _sign_in_page(
            request,
            status=429,
            error=f"Too many sign-in attempts from your address: try again in {int(wait) + 1} s.",
            tenant=tenant,
            username=username,
        )
    settings = services.settings
    accounts = Accounts(
        services.engine,
        services.ledger,
        max_failures=settings.console_sign_in_max_failures,
        lockout_ms=settings.console_sign_in_lockout_s * 1000,
    )
    result = await services.run_blocking(accounts.check_sign_in, tenant, username, password)
    if result.reason == "ok" and result.account is not None:
        if not any(result.account.principal().has_role(r) for r in CONSOLE_ROLES):
            await services.run_blocking(
                services.ledger.append,
                [_failed(tenant, result.account, username, "no_console_role")],
            )
            return _sign_in_page(
                request,
                status=403,
                error="This account may not use the console: it needs the reviewer, auditor,"
                " admin or operator role. Editors work through the API.",
                tenant=tenant,
                username=username,
            )
        session = await services.run_blocking(sessions_of(request).open, result.account)
        response = RedirectResponse(
            _next_path(form.get("next")), status_code=303, headers=SECURITY_HEADERS
        )
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=settings.console_session_ttl_s,
            path=COOKIE_PATH,
            httponly=True,
            samesite="lax",
            secure=cookie_secure(request),
        )
        response.delete_cookie(SIGN_IN_CSRF_COOKIE, path=COOKIE_PATH)
        return response
    await services.run_blocking(
        services.ledger.append, [_failed(tenant, result.account, username, result.reason)]
    )
    if result.reason == "throttled" or result.retry_after_ms:
        seconds = max(1, -(-result.retry_after_ms // 1000))
        return _sign_in_page(
            request,
            status=429,
            error=f"Too many failed sign-ins for this account: try again in {seconds} s.",
            tenant=tenant,
            username=username,
        )
    return _sign_in_page(
        request,
        status=401,
        error="Wrong tenant, username or password (or the account is disabled).",
        tenant=tenant,
        username=username,
    )


@router.post("/sign-out")
async def sign_out(
    request: Request,
    user: ConsoleUser = Depends(require_console(*ROLES)),  # noqa: B008
) -> Response:
    await checked_form(request, user)
    services = get_services(request)
    await services.run_blocking(sessions_of(request).close, user.session)
    response = RedirectResponse("/console/sign-in", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


@router.get("/")
async def overview(
    request: Request,
    user: ConsoleUser = Depends(require_console(*CONSOLE_ROLES)),  # noqa: B008
) -> Response:
    return render(request, "overview.html", user, title="Overview")


@router.get("")
async def bare(request: Request) -> Response:
    """``/console`` → ``/console/`` (the cookie's path covers both)."""
    user = await current_user(request)
    return RedirectResponse(HOME if user else "/console/sign-in", status_code=303)


@router.get("/static/style.css")
async def stylesheet() -> Response:
    return FileResponse(STATIC / "style.css", media_type="text/css")
