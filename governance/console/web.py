"""What every console page shares: the signed-in person, role checks, CSRF-checked forms, and
rendering (templates, security headers, HTML refusals).

A page declares who may open it with ``Depends(require_console(*roles))``: no live session is a
303 to the sign-in page; a session whose account lacks the role is a 403 page, recorded in the
ledger as ``request.refused`` (the person is known, so is their tenant). Every POST reads its form
through ``checked_form``, which refuses a missing or wrong CSRF token the same way. The person's
principal is built like an API key's (``Account.principal``), so the tenant walls of the native
API (``governance.api.tenant_scope``) apply unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.gemini_routes import read_body
from governance.auth.principal import Principal
from governance.console.nav import entries_for
from governance.console.sessions import ConsoleSessions, Session, csrf_matches
from governance.pipeline.errors import TurnError

log = logging.getLogger("custody")

COOKIE = "custody_console"
SIGN_IN_CSRF_COOKIE = "custody_console_csrf"  # double-submit token of the sign-in form
COOKIE_PATH = "/console"
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
templates.env.filters["timestamp"] = lambda seconds: time.strftime(
    "%Y-%m-%d %H:%M:%S", time.gmtime(seconds)
)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class ConsoleRefusal(Exception):
    """A console request refused with an HTML page; recorded when the person is known, unless
    ``recorded`` says the page already recorded it in its own terms (a review's refusal is a
    ``review.refused`` event, as on the native API)."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str,
        *,
        user: ConsoleUser | None = None,
        recorded: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.user = user
        self.recorded = recorded


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page, then back to ``next_path``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class ConsoleUser:
    """The signed-in person of one request."""

    session: Session

    @property
    def principal(self) -> Principal:
        return self.session.account.principal()

    @property
    def groups(self) -> tuple[str, ...]:
        return self.session.account.groups

    @property
    def csrf(self) -> str:
        return self.session.csrf


def sessions_of(request: Request) -> ConsoleSessions:
    services = get_services(request)
    settings = services.settings
    return ConsoleSessions(
        services.engine,
        services.ledger,
        ttl_ms=settings.console_session_ttl_s * 1000,
        idle_ms=settings.console_session_idle_s * 1000,
    )


async def current_user(request: Request) -> ConsoleUser | None:
    token = request.cookies.get(COOKIE, "")
    if not token:
        return None
    session = await get_services(request).run_blocking(sessions_of(request).resolve, token)
    return ConsoleUser(session) if session else None


def require_console(*roles: str) -> Callable[[Request], Awaitable[ConsoleUser]]:
    """A dependency admitting a signed-in person who holds any of ``roles``."""

    async def _check(request: Request) -> ConsoleUser:
        user = await current_user(request)
        if user is None:
            raise SignInRequired(request.url.path)
        principal = user.principal
        if not any(principal.has_role(r) for r in roles):
            raise ConsoleRefusal(
                403,
                f"This page needs the {' or '.join(repr(r) for r in roles)} role; your account"
                f" ({principal.actor} of {principal.tenant}) has"
                f" {', '.join(sorted(principal.roles))}. Ask your Custody administrator.",
                "ROLE_REQUIRED",
                user=user,
            )
        return user

    return _check


def cookie_secure(request: Request) -> bool:
    """Whether cookies get ``Secure``: ``on``/``off``, or ``auto`` = served over https."""
    mode = get_services(request).settings.console_cookie_secure.strip().lower()
    if mode in ("on", "true", "1", "yes"):
        return True
    if mode in ("off", "false", "0", "no"):
        return False
    return request.url.scheme == "https"


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def read_form(request: Request, *, max_files: int = 0) -> FormData:
    """The request's form (urlencoded, or multipart with at most ``max_files`` files), its body
    bounded by ``CUSTODY_MAX_REQUEST_BYTES``; a malformed one is a 400 page."""
    services = get_services(request)
    try:
        body = await read_body(request, services.settings.max_request_bytes)
    except GeminiError as exc:
        raise ConsoleRefusal(exc.code, exc.message, exc.reason or "BAD_FORM") from None
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            return await MultiPartParser(
                request.headers, _once(body), max_files=max_files, max_fields=20
            ).parse()
        if content_type.startswith("application/x-www-form-urlencoded") or not body:
            return await FormParser(request.headers, _once(body), max_fields=20).parse()
    except MultiPartException as exc:
        raise ConsoleRefusal(400, f"The form could not be read: {exc}", "BAD_FORM") from None
    raise ConsoleRefusal(
        400, "Send this form from the console page (a form body was expected).", "BAD_FORM"
    )


async def checked_form(request: Request, user: ConsoleUser, *, max_files: int = 0) -> FormData:
    """The form of a signed-in person's POST, after its CSRF token is checked."""
    try:
        form = await read_form(request, max_files=max_files)
    except ConsoleRefusal as exc:
        exc.user = user
        raise
    presented = form.get("csrf")
    if not isinstance(presented, str) or not csrf_matches(user.csrf, presented):
        raise ConsoleRefusal(
            403,
            "This form's security token is missing or does not belong to your session, so"
            " nothing was done. Reload the page and submit the form again.",
            "CSRF_TOKEN_INVALID",
            user=user,
        )
    return form


def render(
    request: Request,
    template: str,
    user: ConsoleUser | None,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page of the console, with the navigation the person's roles admit."""
    context.setdefault("title", "Custody console")
    return templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "nav": entries_for(user.principal) if user else [],
            "csrf": user.csrf if user else context.pop("sign_in_csrf", ""),
            "path": request.url.path,
            **context,
        },
        status_code=status,
        headers=SECURITY_HEADERS,
    )


async def refused(request: Request, exc: Exception) -> Response:
    """The HTML page of a ``ConsoleRefusal`` (recorded as ``request.refused`` for a known
    person)."""
    assert isinstance(exc, ConsoleRefusal)
    if exc.user is not None and not exc.recorded:
        err = TurnError(exc.code, exc.message, reason=exc.reason)
        try:
            await get_services(request).pipeline.record_refusal(
                exc.user.principal,
                err,
                http_method=request.method,
                path=request.url.path,
            )
        except Exception:  # the page still says why; the log says the record failed
            log.exception("console: could not record a refusal of %s", request.url.path)
    return render(
        request,
        "error.html",
        exc.user,
        status=exc.code,
        title="Refused",
        code=exc.code,
        reason=exc.reason,
        message=exc.message,
    )


async def to_sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(
        f"/console/sign-in?next={quote(exc.next_path, safe='/')}",
        status_code=303,
        headers=SECURITY_HEADERS,
    )
