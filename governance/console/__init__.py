"""The review console: server-rendered pages for people under ``/console/`` (FastAPI + Jinja2,
no JavaScript needed).

``install(app)`` adds its routers and the handlers that turn its refusals into HTML pages and
a missing session into a redirect to the sign-in page. A new page is a router here, an entry in
``nav.NAV`` and a template extending ``base.html``.
"""

from __future__ import annotations

from fastapi import FastAPI

from governance.console import (
    compliance_pages,
    evidence_page,
    ledger_page,
    review_queue,
    review_task,
    session_page,
    sign_in,
    verify_page,
)
from governance.console.web import ConsoleRefusal, SignInRequired, refused, to_sign_in


def install(app: FastAPI) -> None:
    app.include_router(sign_in.router)
    app.include_router(ledger_page.router)
    app.include_router(verify_page.router)
    app.include_router(evidence_page.router)
    app.include_router(review_queue.router)
    app.include_router(review_task.router)
    app.include_router(session_page.router)
    app.include_router(compliance_pages.router)
    app.add_exception_handler(ConsoleRefusal, refused)
    app.add_exception_handler(SignInRequired, to_sign_in)
