"""The Custody ASGI application: routers, error envelopes, start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from governance import __version__
from governance.api import gemini_routes, health_routes, ledger_routes, verify_routes
from governance.api.erasure_routes import router as erasure_router
from governance.api.errors import GeminiError
from governance.api.keys_routes import router as keys_router
from governance.background import background_jobs
from governance.services import Services, build_services
from governance.settings import Settings

log = logging.getLogger("custody")


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """A Custody app; builds its services at start-up unless they are given."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        app.state.services = services or build_services(settings)
        announce(app.state.services)
        try:
            async with background_jobs(app.state.services):
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
    app.include_router(verify_routes.router)
    app.include_router(keys_router)
    app.include_router(erasure_router)
    app.include_router(gemini_routes.router)

    @app.exception_handler(GeminiError)
    async def _gemini_error(request: Request, exc: GeminiError) -> Response:
        if exc.code in (401, 403) and exc.reason.startswith("API_KEY"):
            request.app.state.services.metrics.auth_failures.inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return GeminiError(400, f"Invalid request: {exc.errors()}").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return GeminiError(exc.status_code, str(exc.detail)).response()

    return app


def announce(services: Services) -> None:
    """Say loudly which upstream this process uses: nobody may mistake the emulator for Gemini."""
    if services.upstream.is_emulator:
        banner = (
            "\n" + "!" * 78 + "\n"
            "!!  Custody is using the built-in GEMINI EMULATOR, not Google Gemini.\n"
            f"!!  Upstream: {services.upstream.label}\n"
            "!!  No Gemini key is configured (GEMINI_API_KEY / CUSTODY_UPSTREAM_API_KEY).\n"
            "!!  Every record and manifest of this process is labelled as emulated.\n" + "!" * 78
        )
        log.warning(banner)
        print(banner, flush=True)
    else:
        msg = f"Custody upstream: {services.upstream.label} ({services.upstream.base_url})"
        log.info(msg)
        print(msg, flush=True)
