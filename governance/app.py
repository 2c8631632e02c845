"""The Custody ASGI application: routers, error envelopes, start-up and shutdown."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from governance import __version__
from governance.api import (
    authorship_routes,
    compliance_routes,
    erasure_routes,
    evidence_routes,
    gemini_routes,
    health_routes,
    keys_routes,
    ledger_routes,
    models_routes,
    review_routes,
    session_routes,
    verify_routes,
)
from governance.api.deps import get_services, presented_key
from governance.api.errors import GeminiError, error_response, not_served
from governance.api.request_limits import (
    RequestBodyTimeout,
    RequestLimits,
    RequestLimitSettings,
    body_timeout_error,
    new_counts,
)
from governance.background import background_jobs
from governance.connection_guard import ConnectionLimits, ConnectionTable, guarded_protocol
from governance.console import install as install_console
from governance.fd_headroom import connection_budget
from governance.health_listener import health_port
from governance.listening import bind_listener
from governance.logredact import install_key_redaction
from governance.pipeline.errors import TurnError, pushback_error
from governance.services import Services, build_services
from governance.settings import Settings
from governance.upstream.identity import is_google_endpoint
from storage.ledger import LedgerPushback

log = logging.getLogger("custody")


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """A Custody app; builds its services at start-up unless they are given."""
    settings = settings or Settings()
    install_key_redaction()  # ?key= never reaches a log line (uvicorn's, ours)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        app.state.services = services or build_services(settings)
        announce(app.state.services)
        metrics = app.state.services.metrics
        metrics.count_from(
            "custody_connections_cut",
            "Connections closed by the guard: header_timeout, evicted (oldest idle), refused_full.",
            app.state.connection_table.counts,
        )
        metrics.count_from(
            "custody_requests_shed",
            "Requests refused under load: inflight (over the limit, before the body was read),"
            " body_timeout, ledger_pushback (the ledger's append queue was full).",
            shed_counts,
        )
        sock = app.state.health_socket
        if sock is None and settings.health_port:
            sock = bind_listener(settings.host, settings.health_port)
        try:
            async with (
                background_jobs(app.state.services),
                health_port(sock, settings.health_stall_s) as app.state.health_listener,
            ):
                yield
        finally:
            if own:
                await app.state.services.aclose()

    app = FastAPI(
        title="Custody",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.include_router(health_routes.router)
    app.include_router(ledger_routes.router)
    app.include_router(compliance_routes.router)
    app.include_router(compliance_routes.oversight_router)
    app.include_router(verify_routes.router)
    app.include_router(keys_routes.router)
    app.include_router(erasure_routes.router)
    app.include_router(evidence_routes.router)
    app.include_router(review_routes.router)
    app.include_router(session_routes.router)
    app.include_router(authorship_routes.router)
    app.include_router(models_routes.router)  # before gemini_routes: :countTokens is its own
    app.include_router(gemini_routes.router)
    install_console(app)  # /console/: people's pages, HTML refusals
    shed_counts = new_counts()
    shed_counts["ledger_pushback"] = 0  # counted by the LedgerPushback handler below

    def attribute_shed(scope: Scope, reason: str) -> None:
        """An in-flight refusal, counted for the tenant of a key the cache already knows."""
        services: Services | None = getattr(app.state, "services", None)
        presented = presented_key(Request(scope))
        if services is None or not presented:
            return
        principal = services.keys.cached_principal(presented)
        if principal is not None:
            services.shed.count(principal, reason)

    app.add_middleware(
        RequestLimits,
        counts=shed_counts,
        on_shed=attribute_shed,
        limits=RequestLimitSettings(
            max_inflight=settings.max_inflight_requests,
            body_idle_timeout_s=settings.body_idle_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            retry_after_s=settings.overload_retry_after_s,
        ),
    )
    app.state.connection_table = ConnectionTable(
        ConnectionLimits(
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_connections=connection_budget(settings.max_connections, settings.fd_reserve),
            max_per_client=settings.max_connections_per_client,
            retry_after_s=settings.overload_retry_after_s,
        )
    )
    app.state.keep_alive_timeout_s = settings.keep_alive_timeout_s
    app.state.health_socket = None  # ``custody serve`` binds CUSTODY_HEALTH_PORT before start-up

    @app.exception_handler(RequestBodyTimeout)
    async def _body_timeout(request: Request, exc: RequestBodyTimeout) -> Response:
        log.info("request body too slow on %s %s: %s", request.method, request.url.path, exc)
        return error_response(await _recorded_if_model_route(request, body_timeout_error(exc)))

    def _count_pushback(request: Request) -> None:
        shed_counts["ledger_pushback"] += 1
        principal = getattr(request.state, "principal", None)
        if principal is not None:  # authenticated: counted for its tenant's requests.shed
            request.app.state.services.shed.count(principal, "LEDGER_PUSHBACK")

    @app.exception_handler(TurnError)  # GeminiError is one too
    async def _turn_error(request: Request, exc: TurnError) -> Response:
        if exc.code in (401, 403) and exc.reason.startswith("API_KEY"):
            request.app.state.services.metrics.auth_failures.inc()
        if exc.reason == "LEDGER_PUSHBACK":  # a turn the pipeline closed on a push-back
            _count_pushback(request)
        return error_response(exc)

    @app.exception_handler(LedgerPushback)
    async def _ledger_pushback(request: Request, exc: LedgerPushback) -> Response:
        _count_pushback(request)
        return error_response(pushback_error(exc.retry_after_ms))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        log.info("invalid request %s %s: %s", request.method, request.url.path, exc.errors())
        return GeminiError(400, f"Invalid request: {describe_validation(exc)}.").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
            # No route (404) or not this method on it (405): say what Custody serves.
            err = not_served(request.url.path, exc.status_code, request.method)
            err.headers.update(exc.headers or {})
            return error_response(await _recorded_if_model_route(request, err))
        return GeminiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return GeminiError(
            500,
            "Custody failed while handling this request; the cause is in its server log. Retry"
            " later, and tell your Custody administrator if it keeps failing.",
            reason="INTERNAL_ERROR",
        ).response()

    return app


def server_options(app: FastAPI) -> dict[str, object]:
    """What ``uvicorn.Config`` needs to serve ``app`` with its connection guard
    (``governance.connection_guard``): the guarded protocol and the keep-alive timeout."""
    return {
        "http": guarded_protocol(app.state.connection_table),
        "timeout_keep_alive": app.state.keep_alive_timeout_s,
    }


def describe_validation(exc: RequestValidationError) -> str:
    """Which parameter was wrong and why, in words (pydantic's internals stay in the log)."""
    problems = []
    for error in exc.errors()[:5]:
        loc = [str(p) for p in error.get("loc", ())]
        where = f"{loc[0]} parameter '{'.'.join(loc[1:])}'" if len(loc) > 1 else ".".join(loc)
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "the request does not match this route"


_MODEL_ROUTE = re.compile(r"^/v[0-9][0-9a-z]*/(?:.*/)?models(?:/|$)")


async def _recorded_if_model_route(request: Request, err: TurnError) -> TurnError:
    """A model-route refusal of an authenticated caller is recorded (``request.refused``);
    anyone else's is only answered: without a tenant there is no ledger to write it to."""
    if not _MODEL_ROUTE.match(request.url.path):
        return err
    principal = get_services(request).keys.authenticate(presented_key(request) or "-")
    if principal is None:
        return err
    return await get_services(request).pipeline.record_refusal(
        principal,
        err,
        http_method=request.method,
        path=request.url.path,
    )


def announce(services: Services) -> None:
    """Say once, in the log, which upstream this process uses: nobody may mistake the emulator
    for Gemini, nor think a GEMINI_API_KEY in the shell made it the upstream key."""
    if services.upstream.is_emulator:
        lines = [
            "Custody is using the built-in GEMINI EMULATOR, not Google Gemini.",
            f"Upstream: {services.upstream.label}",
            "No upstream key is configured (CUSTODY_UPSTREAM_API_KEY or"
            " CUSTODY_UPSTREAM_API_KEY_FILE).",
        ]
        for name in services.settings.ignored_sdk_key_variables:
            lines.append(
                f"{name} is set in this shell; Custody never uses it as its upstream key"
                " (apps send it to Custody as their Custody key)."
            )
        lines.append("Every record and manifest of this process is labelled as emulated.")
        bar = "!" * 78
        log.warning("\n".join(["", bar, *(f"!!  {line}" for line in lines), bar]))
    else:
        google = is_google_endpoint(services.upstream.base_url)
        log.info(
            "Custody upstream: %s (%s)",
            services.upstream.base_url,
            "a Google Gemini endpoint"
            if google
            else "not a Google endpoint: manifests name it by host, never Google or SynthID",
        )
