"""Every route of the app × method × role → the status a running server must answer (issue 14).

``MATRIX`` is the authorization table: one row per (method, path) of ``app.routes``, each with the
request to send and the expected status for every caller in ``CALLERS`` (a tenant's editor,
reviewer, auditor and admin; the installation's operator; no key at all; another tenant's admin).
``test_every_route_has_a_row`` fails when the app has a route without a row (or a row without a
route), so a new route cannot ship unguarded; ``test_cell`` sends each cell's request to a real
server and checks the status. What a cross-tenant caller may *see* in a 200 is checked in
``tests/test_tenant_walls.py``.

How to add a row: add one entry to ``MATRIX`` keyed by ``(METHOD, route.path)`` exactly as FastAPI
lists it (path parameters in braces, e.g. ``/{api_version}/models/{model_action}``). Its value is
``row(PROFILE, path=..., params=..., body=...)``: a profile is a dict caller → status (``OPEN``,
``READER``, ``SIGNER``, ``EDITOR`` below, or your own dict literal); ``path`` fills the braces;
``params`` is the query string; ``body`` is JSON (a dict) or bytes, or the name of a ``Setup``
attribute (e.g. ``"signed_png"``) for content made by a real turn. Override single cells with
``row(READER, other_admin=200)``.

Console rows (``console=True``, the HTML pages under ``/console/``) authenticate with a session
cookie instead of a key: each caller has a console account of the same roles, and each cell opens
a fresh session for it directly (an editor could not sign in, but a session of theirs must still
be refused by the route). A POST sends ``form`` with the session's CSRF token; ``sign_in_form``
rows send the sign-in page's double-submit token instead. No session is a 303 to the sign-in
page; a refusal is an HTML page, not Gemini's envelope.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from governance.accounts.store import Account, Accounts
from governance.app import create_app
from governance.auth.keys import create_key, parse_key
from governance.auth.lifecycle import Operator
from governance.console.sessions import ConsoleSessions, csrf_token
from governance.console.web import COOKIE, SIGN_IN_CSRF_COOKIE
from governance.settings import Settings
from tests.conftest import RunningCustody, start_custody

CALLERS = ("editor", "reviewer", "auditor", "admin", "operator", "no_key", "other_admin")


def profile(**statuses: int) -> dict[str, int]:
    missing = set(CALLERS) - set(statuses)
    assert not missing, f"a profile names every caller; missing {sorted(missing)}"
    return statuses


# Open to anyone (load balancers, the SDK's discovery): says nothing about any tenant.
OPEN = profile(
    editor=200, reviewer=200, auditor=200, admin=200, operator=200, no_key=200, other_admin=200
)
# Readers: auditors (admins hold it), operators; another tenant's admin reads its own tenant.
READER = profile(
    editor=403, reviewer=403, auditor=200, admin=200, operator=200, no_key=401, other_admin=200
)
# Readers let through to a record that does not exist: 404, not 403.
READER_OF_NOTHING = {**READER, "auditor": 404, "admin": 404, "operator": 404, "other_admin": 404}
# Checkpoint signing: admins and operators only.
SIGNER = profile(
    editor=403, reviewer=403, auditor=403, admin=200, operator=200, no_key=401, other_admin=200
)
# Model calls: editors (admins hold it) of a tenant; the operator is no tenant's user.
EDITOR = profile(
    editor=200, reviewer=403, auditor=403, admin=200, operator=403, no_key=401, other_admin=200
)
# Key and erasure management: a tenant's admin (for its own tenant) and the operator.
MANAGER = profile(
    editor=403, reviewer=403, auditor=403, admin=200, operator=200, no_key=401, other_admin=200
)
# The same callers are let through to a key or content that does not exist: 404, not 403.
MANAGER_OF_NOTHING = {**MANAGER, "admin": 404, "operator": 404, "other_admin": 404}
# Console pages: anyone signed in with a console role (reviewer, auditor, admin, operator);
# without a session, a 303 to the sign-in page.
CONSOLE = profile(
    editor=403, reviewer=200, auditor=200, admin=200, operator=200, no_key=303, other_admin=200
)
# Console pages of readers (the ledger, verification): as READER, signed in.
CONSOLE_READER = {**CONSOLE, "reviewer": 403}
# A POST whose success is a redirect back (verify the ledger now).
CONSOLE_READER_POST = {**CONSOLE_READER, "auditor": 303, "admin": 303, "operator": 303,
                       "other_admin": 303}  # fmt: skip
EVERYONE_REDIRECTED = profile(
    editor=303, reviewer=303, auditor=303, admin=303, operator=303, no_key=303, other_admin=303
)
NOBODY_SIGNS_IN = profile(
    editor=401, reviewer=401, auditor=401, admin=401, operator=401, no_key=401, other_admin=401
)
NO_SUCH_KEY = "/api/v1/keys/00000000000000ff"
# The review queue: reviewers and auditors of a tenant, the operator; never an editor.
REVIEW_READER = profile(
    editor=403, reviewer=200, auditor=200, admin=200, operator=200, no_key=401, other_admin=200
)
# Claiming and deciding: reviewers only (admins hold the role); here on a task that does not
# exist, so those let through get 404 (success is in tests/test_review_routes.py).
REVIEW_DECIDER_OF_NOTHING = profile(
    editor=403, reviewer=404, auditor=403, admin=404, operator=403, no_key=401, other_admin=404
)
NO_SUCH_REVIEW = "/api/v1/reviews/" + "0" * 32
NO_SUCH_SESSION = "/api/v1/sessions/ses_" + "0" * 24
NO_SUCH_VERSION = "ver_" + "0" * 24
# A turn's status: its requester, the tenant's reviewers and auditors, the operator.
TURN_READER_OF_NOTHING = profile(
    editor=404, reviewer=404, auditor=404, admin=404, operator=404, no_key=401, other_admin=404
)

# The console's review pages on a task that does not exist: readers get past the role check to
# a 404; editors are refused; deciders are reviewers (admins hold the role), never auditors or
# the operator.
NO_SUCH_CONSOLE_REVIEW = "/console/reviews/" + "0" * 32
CONSOLE_OF_NO_TASK = {**CONSOLE, **{c: 404 for c in ("reviewer", "auditor", "admin", "operator",
                                                     "other_admin")}}  # fmt: skip
CONSOLE_DECIDER_OF_NO_TASK = {**REVIEW_DECIDER_OF_NOTHING, "no_key": 303}


@dataclass(frozen=True)
class Row:
    expect: dict[str, int]
    path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | bytes | str | None = None
    content_type: str | None = None
    console: bool = False
    form: dict[str, str] | None = None
    upload: str | None = None  # a Setup attribute sent as the form's "image" file
    sign_in_form: bool = False


def row(
    expect: dict[str, int],
    *,
    path: str | None = None,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | bytes | str | None = None,
    content_type: str | None = None,
    console: bool = False,
    form: dict[str, str] | None = None,
    upload: str | None = None,
    sign_in_form: bool = False,
    **overrides: int,
) -> Row:
    return Row(
        {**expect, **overrides},
        path,
        params or {},
        body,
        content_type,
        console,
        form,
        upload,
        sign_in_form,
    )


GENERATE = {"contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}]}

MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/healthz"): row(OPEN),
    ("GET", "/readyz"): row(OPEN),
    ("GET", "/api/v1/openapi.json"): row(OPEN),
    ("HEAD", "/api/v1/openapi.json"): row(OPEN),
    ("GET", "/metrics"): row(READER),
    ("GET", "/api/v1/ledger/checkpoint"): row(READER),
    ("POST", "/api/v1/ledger/checkpoint"): row(SIGNER),
    ("GET", "/api/v1/ledger/checkpoint/cosigned"): row(READER),
    ("GET", "/api/v1/ledger/entries"): row(READER, params={"start": 0, "end": 5}),
    ("GET", "/api/v1/ledger/proof/inclusion"): row(READER, params={"index": 0}),
    ("GET", "/api/v1/ledger/proof/consistency"): row(READER, params={"old": 1}),
    ("GET", "/api/v1/ledger/proof/file"): row(READER, params={"index": 0}),
    ("POST", "/api/v1/verify"): row(READER, body="signed_png", content_type="image/png"),
    ("GET", "/api/v1/query/turns"): row(READER, params={"limit": 5}),
    ("GET", "/api/v1/query/events"): row(READER, params={"limit": 5}),
    ("GET", "/api/v1/query/images/{sha256}"): row(READER, path="/api/v1/query/images/" + "0" * 64),
    ("GET", "/api/v1/query/turns/{turn_id}/proof"): row(
        READER_OF_NOTHING, path="/api/v1/query/turns/no-such-turn/proof"
    ),
    ("POST", "/api/v1/query/prompts"): row(READER, body={"query": "teal"}),
    ("GET", "/api/v1/query/outputs/{sha256}/record"): row(
        READER_OF_NOTHING, path="/api/v1/query/outputs/" + "0" * 64 + "/record"
    ),
    ("GET", "/api/v1/query/outputs/missing-marking"): row(READER, params={"limit": 5}),
    ("GET", "/api/v1/oversight"): row(READER, params={"format": "csv"}),
    ("POST", "/{api_version}/models/{model_action}"): row(
        EDITOR, path="/v1beta/models/gemini-2.5-flash-image:generateContent", body=GENERATE
    ),
    ("GET", "/{api_version}/models"): row(EDITOR, path="/v1beta/models"),
    ("GET", "/{api_version}/models/{model}"): row(
        EDITOR, path="/v1beta/models/gemini-2.5-flash-image"
    ),
    ("POST", "/{api_version}/models/{model}:countTokens"): row(
        EDITOR, path="/v1beta/models/gemini-2.5-flash-image:countTokens", body=GENERATE
    ),
    ("GET", "/api/v1/keys"): row(MANAGER),
    ("POST", "/api/v1/keys"): row(MANAGER, body={"roles": ["editor"], "label": "authz matrix"}),
    # Success on a real key is in tests/test_keys_api.py; here: who gets past the role check.
    ("POST", "/api/v1/keys/{key_id}/revoke"): row(
        MANAGER_OF_NOTHING, path=NO_SUCH_KEY + "/revoke", body={}
    ),
    ("POST", "/api/v1/keys/{key_id}/rotate"): row(
        MANAGER_OF_NOTHING, path=NO_SUCH_KEY + "/rotate", body={}
    ),
    ("POST", "/api/v1/erasures"): row(
        MANAGER_OF_NOTHING, body={"digest": "ab" * 32, "reason": "authorization matrix"}
    ),
    # An operator must name the tenant (400); success on a real session: test_evidence_api.py.
    ("POST", "/api/v1/evidence/bundles"): row(READER, body={}, operator=400),
    ("GET", "/api/v1/evidence/bundles/{bundle_id}"): row(
        {**READER, **{c: 404 for c in ("auditor", "admin", "operator", "other_admin")}},
        path="/api/v1/evidence/bundles/eb_" + "0" * 24,
    ),
    ("GET", "/api/v1/reviews"): row(REVIEW_READER),
    ("GET", "/api/v1/reviews/{task_id}"): row(
        {**REVIEW_READER, **{c: 404 for c in ("reviewer", "auditor", "admin", "operator")}},
        path=NO_SUCH_REVIEW,
        other_admin=404,
    ),
    ("POST", "/api/v1/reviews/{task_id}/claim"): row(
        REVIEW_DECIDER_OF_NOTHING, path=NO_SUCH_REVIEW + "/claim", body={}
    ),
    ("POST", "/api/v1/reviews/{task_id}/decision"): row(
        REVIEW_DECIDER_OF_NOTHING,
        path=NO_SUCH_REVIEW + "/decision",
        body={"decision": "approve", "comment": "", "shown_digest": "0" * 64},
    ),
    ("GET", "/api/v1/turns/{turn_id}"): row(TURN_READER_OF_NOTHING, path="/api/v1/turns/nothing"),
    # Sessions: editors create them; every authenticated caller lists its own (or, reading
    # roles, its tenant's); a session that does not exist is a 404 to every caller, whether it
    # reads or writes (the owner check comes after; tests/test_sessions_api.py has the rest).
    ("POST", "/api/v1/sessions"): row(EDITOR, body={}),
    ("GET", "/api/v1/sessions"): row({**OPEN, "no_key": 401}),
    ("GET", "/api/v1/sessions/{session_id}"): row(TURN_READER_OF_NOTHING, path=NO_SUCH_SESSION),
    ("GET", "/api/v1/sessions/{session_id}/timeline"): row(
        TURN_READER_OF_NOTHING, path=NO_SUCH_SESSION + "/timeline"
    ),
    ("GET", "/api/v1/sessions/{session_id}/authorship"): row(
        TURN_READER_OF_NOTHING, path=NO_SUCH_SESSION + "/authorship"
    ),
    ("POST", "/api/v1/sessions/{session_id}/images"): row(
        TURN_READER_OF_NOTHING,
        path=NO_SUCH_SESSION + "/images",
        body={"data": "AAAA", "mime_type": "image/png", "source": "matrix"},
    ),
    ("GET", "/api/v1/sessions/{session_id}/versions/{version_id}/content"): row(
        TURN_READER_OF_NOTHING, path=NO_SUCH_SESSION + "/versions/" + NO_SUCH_VERSION + "/content"
    ),
    ("POST", "/api/v1/sessions/{session_id}/turns"): row(
        TURN_READER_OF_NOTHING,
        path=NO_SUCH_SESSION + "/turns",
        body={"instruction": "teal", "targets": [{"version": NO_SUCH_VERSION}]},
    ),
    ("POST", "/api/v1/sessions/{session_id}/rollback"): row(
        TURN_READER_OF_NOTHING,
        path=NO_SUCH_SESSION + "/rollback",
        body={"version": NO_SUCH_VERSION},
    ),
    ("POST", "/api/v1/sessions/{session_id}/versions/{version_id}/labels"): row(
        TURN_READER_OF_NOTHING,
        path=NO_SUCH_SESSION + "/versions/" + NO_SUCH_VERSION + "/labels",
        body={"label": "matrix"},
    ),
    ("GET", "/api/v1/review-groups"): row(MANAGER),
    ("POST", "/api/v1/review-groups/{group}/members"): row(
        MANAGER, path="/api/v1/review-groups/reviewers/members", body={"actor": "matrix@acme"}
    ),
    ("DELETE", "/api/v1/review-groups/{group}/members/{actor}"): row(
        MANAGER_OF_NOTHING, path="/api/v1/review-groups/reviewers/members/nobody@acme"
    ),
    ("GET", "/api/v1/webhooks"): row(MANAGER),
    ("POST", "/api/v1/webhooks"): row(MANAGER, body={"url": "https://hooks.example.invalid/x"}),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): row(
        MANAGER_OF_NOTHING, path="/api/v1/webhooks/" + "0" * 32
    ),
    ("GET", "/console/sign-in"): row(OPEN, console=True),
    ("POST", "/console/sign-in"): row(
        NOBODY_SIGNS_IN,
        console=True,
        sign_in_form=True,
        form={"tenant": "acme", "username": "nobody", "password": "not the password"},
    ),
    ("POST", "/console/sign-out"): row(EVERYONE_REDIRECTED, console=True, form={}),
    ("GET", "/console"): row(EVERYONE_REDIRECTED, console=True),
    ("GET", "/console/"): row(CONSOLE, console=True),
    ("GET", "/console/static/style.css"): row(OPEN, console=True),
    ("GET", "/console/ledger"): row(CONSOLE_READER, console=True),
    ("POST", "/console/ledger/verify"): row(CONSOLE_READER_POST, console=True, form={}),
    ("GET", "/console/verify"): row(CONSOLE_READER, console=True),
    ("GET", "/console/queries"): row(CONSOLE_READER, console=True, params={"session": "s"}),
    ("GET", "/console/queries/turns/{turn_id}/proof"): row(
        {**CONSOLE_READER, **{c: 404 for c in ("auditor", "admin", "operator", "other_admin")}},
        console=True,
        path="/console/queries/turns/no-such-turn/proof",
    ),
    ("GET", "/console/oversight"): row(CONSOLE_READER, console=True, params={"format": "csv"}),
    ("POST", "/console/verify"): row(CONSOLE_READER, console=True, form={}, upload="signed_png"),
    ("GET", "/console/evidence"): row(CONSOLE_READER, console=True),
    # An operator must name a tenant (400); another tenant's admin exports its own tenant.
    ("POST", "/console/evidence"): row(CONSOLE_READER, console=True, form={}, operator=400),
    ("GET", "/console/evidence/{bundle_id}/download"): row(
        {**CONSOLE_READER, **{c: 404 for c in ("auditor", "admin", "operator", "other_admin")}},
        console=True,
        path="/console/evidence/eb_" + "0" * 24 + "/download",
    ),
    ("GET", "/console/reviews"): row(CONSOLE, console=True),
    # A task that does not exist: those let through get 404 (success: tests/test_console_review.py).
    ("GET", "/console/reviews/{task_id}"): row(
        CONSOLE_OF_NO_TASK, console=True, path=NO_SUCH_CONSOLE_REVIEW
    ),
    ("GET", "/console/sessions/{session_id}"): row(
        CONSOLE_OF_NO_TASK, console=True, path="/console/sessions/ses_" + "0" * 24
    ),
    ("GET", "/console/sessions/{session_id}/authorship"): row(
        CONSOLE_OF_NO_TASK,
        console=True,
        path="/console/sessions/ses_" + "0" * 24 + "/authorship",
    ),
    ("GET", "/console/sessions/{session_id}/versions/{version_id}/content"): row(
        CONSOLE_OF_NO_TASK,
        console=True,
        path="/console/sessions/ses_" + "0" * 24 + "/versions/" + NO_SUCH_VERSION + "/content",
    ),
    ("GET", "/console/reviews/{task_id}/content/{kind}/{index}"): row(
        CONSOLE_OF_NO_TASK, console=True, path=NO_SUCH_CONSOLE_REVIEW + "/content/inputs/0"
    ),
    ("POST", "/console/reviews/{task_id}/claim"): row(
        CONSOLE_DECIDER_OF_NO_TASK, console=True, path=NO_SUCH_CONSOLE_REVIEW + "/claim", form={}
    ),
    ("POST", "/console/reviews/{task_id}/decision"): row(
        CONSOLE_DECIDER_OF_NO_TASK,
        console=True,
        path=NO_SUCH_CONSOLE_REVIEW + "/decision",
        form={"decision": "approve", "comment": "", "shown_digest": "0" * 64},
    ),
}


def _app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, routers included (FastAPI ≥ 0.16x keeps
    included routers lazily: ``iter_route_contexts`` walks them with their prefixes)."""
    app = create_app(Settings())  # services are built at start-up only: nothing is opened here
    out = set()
    for route in iter_route_contexts(app.routes):
        for method in route.methods or ():
            if route.path is not None:
                out.add((method, route.path))
    return out


def test_every_route_has_a_row() -> None:
    routes = _app_routes()
    unguarded = sorted(routes - set(MATRIX))
    assert not unguarded, (
        f"routes without a row in MATRIX (add one, see the docstring): {unguarded}"
    )
    stale = sorted(set(MATRIX) - routes)
    assert not stale, f"rows in MATRIX for routes the app no longer has: {stale}"


@dataclass
class Setup:
    """A running gateway with a key per caller and content made by a real turn."""

    custody: RunningCustody
    keys: dict[str, str]
    signed_png: bytes
    accounts: dict[str, Account]

    def console_session(self, caller: str) -> str:
        """A fresh console session of ``caller``'s account (its cookie value)."""
        services = self.custody.services
        sessions = ConsoleSessions(
            services.engine,  # type: ignore[attr-defined]
            services.ledger,  # type: ignore[attr-defined]
            ttl_ms=3_600_000,
            idle_ms=0,
        )
        return sessions.open(self.accounts[caller]).token


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Iterator[Setup]:
    custody = start_custody(tmp_path_factory.mktemp("authz") / "custody")
    engine = custody.services.engine  # type: ignore[attr-defined]
    keys = {
        **{role: custody.keys[role] for role in ("editor", "reviewer", "auditor", "admin")},
        "operator": create_key(engine, tenant="custody", actor="ops@custody", roles=["operator"]),
        "other_admin": create_key(engine, tenant="globex", actor="admin@globex", roles=["admin"]),
    }
    photo = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    edit = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "make it teal"},
                    {
                        "inlineData": {
                            "mimeType": "image/png",
                            "data": base64.b64encode(photo).decode(),
                        }
                    },
                ],
            }
        ]
    }
    resp = httpx.post(
        custody.base_url + "/v1beta/models/gemini-2.5-flash-image:generateContent",
        json=edit,
        headers={"x-goog-api-key": keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    part = next(
        p
        for p in resp.json()["candidates"][0]["content"]["parts"]
        if "inlineData" in p or "inline_data" in p
    )
    signed = base64.b64decode((part.get("inlineData") or part["inline_data"])["data"])
    people = Accounts(engine, custody.services.ledger)  # type: ignore[attr-defined]
    by = Operator(actor="authz-matrix", via="cli")
    accounts = {
        caller: people.create(
            tenant=tenant, username=caller, password="matrix password 1", roles=[role], by=by
        )
        for caller, tenant, role in (
            ("editor", "acme", "editor"),
            ("reviewer", "acme", "reviewer"),
            ("auditor", "acme", "auditor"),
            ("admin", "acme", "admin"),
            ("operator", "custody", "operator"),
            ("other_admin", "globex", "admin"),
        )
    }
    custody.services.ledger.issue_checkpoint()  # type: ignore[attr-defined]
    try:
        yield Setup(custody, keys, signed, accounts)
    finally:
        custody.stop()


CELLS = [
    pytest.param(key, caller, id=f"{key[0]} {key[1]} as {caller}")
    for key in MATRIX
    for caller in CALLERS
]


def _console_cell(setup: Setup, method: str, route_path: str, spec: Row, caller: str) -> None:
    cookies: dict[str, str] = {}
    form = dict(spec.form or {})
    if caller != "no_key":
        token = setup.console_session(caller)
        cookies[COOKIE] = token
        form["csrf"] = csrf_token(token)
    if spec.sign_in_form:
        cookies[SIGN_IN_CSRF_COOKIE] = form["csrf"] = "matrix-sign-in-token"
        # a name of its own per caller: failures under one name are throttled (429), account or not
        form["username"] = f"{form['username']}-{caller}"
    files = (
        {"image": ("image.png", getattr(setup, spec.upload), "image/png")} if spec.upload else None
    )
    with httpx.Client(base_url=setup.custody.base_url, cookies=cookies, timeout=60) as client:
        resp = client.request(
            method,
            spec.path or route_path,
            params=spec.params,
            data=form if spec.form is not None else None,
            files=files,
        )
    expected = spec.expect[caller]
    assert resp.status_code == expected, f"{method} {route_path} as {caller}: {resp.text[:300]}"
    if caller == "no_key" and expected == 303:
        assert resp.headers["location"].startswith("/console/sign-in")
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("text/html")
        assert "refused" in resp.text or "Sign in" in resp.text


def _send(setup: Setup, method: str, route_path: str, spec: Row, key: str | None) -> httpx.Response:
    """One keyed-API cell's request, sent with ``key`` (None: no key at all)."""
    headers = {} if key is None else {"x-goog-api-key": key}
    body = getattr(setup, spec.body) if isinstance(spec.body, str) else spec.body
    if spec.content_type:
        headers["content-type"] = spec.content_type
    return httpx.request(
        method,
        setup.custody.base_url + (spec.path or route_path),
        params=spec.params,
        headers=headers,
        json=body if isinstance(body, dict) else None,
        content=body if isinstance(body, bytes) else None,
        timeout=60,
    )


@pytest.mark.parametrize(("key", "caller"), CELLS)
def test_cell(setup: Setup, key: tuple[str, str], caller: str) -> None:
    method, route_path = key
    spec = MATRIX[key]
    if spec.console:
        _console_cell(setup, method, route_path, spec, caller)
        return
    api_key = None if caller == "no_key" else setup.keys[caller]
    resp = _send(setup, method, route_path, spec, api_key)
    expected = spec.expect[caller]
    assert resp.status_code == expected, f"{method} {route_path} as {caller}: {resp.text[:300]}"
    if resp.status_code >= 400 and method != "HEAD":
        error = resp.json()["error"]  # refusals are in Gemini's envelope
        assert error["code"] == resp.status_code and error["message"]


# --- a revoked key, on every route that takes a key ---------------------------------------------

# Every row a caller without a key is refused (401): the routes that authenticate with a key.
KEYED_ROWS = [k for k, spec in MATRIX.items() if not spec.console and spec.expect["no_key"] == 401]


@pytest.fixture(scope="module")
def revoked(setup: Setup) -> dict[str, str]:
    """An admin of acme and an operator, each used once (so the gateway has it cached), then
    revoked through the admin API: the holders of every right a key can carry."""
    engine = setup.custody.services.engine  # type: ignore[attr-defined]
    keys = {
        "admin": create_key(engine, tenant="acme", actor="gone-admin@acme", roles=["admin"]),
        "operator": create_key(engine, tenant="custody", actor="gone@custody", roles=["operator"]),
    }
    base = setup.custody.base_url
    for key in keys.values():
        used = httpx.get(
            base + "/api/v1/ledger/checkpoint", headers={"x-goog-api-key": key}, timeout=60
        )
        assert used.status_code == 200, used.text
        key_id = parse_key(key)[0]  # type: ignore[index]
        resp = httpx.post(
            f"{base}/api/v1/keys/{key_id}/revoke",
            json={"reason": "authorization matrix"},
            headers={"x-goog-api-key": setup.keys["operator"]},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
    return keys


@pytest.mark.parametrize("caller", ["admin", "operator"])
@pytest.mark.parametrize("key", KEYED_ROWS, ids=lambda k: f"{k[0]} {k[1]}")
def test_a_revoked_key_is_refused_on_every_route(
    setup: Setup, revoked: dict[str, str], key: tuple[str, str], caller: str
) -> None:
    method, route_path = key
    spec = MATRIX[key]
    resp = _send(setup, method, route_path, spec, revoked[caller])
    assert resp.status_code == 403, f"{method} {route_path}: {resp.status_code} {resp.text[:300]}"
    error = resp.json()["error"]
    assert error["status"] == "PERMISSION_DENIED" and "revoked" in error["message"], error
