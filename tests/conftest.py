"""Fixtures shared by every test: data directories, SQLite and PostgreSQL databases.

PostgreSQL tests run against the server at 127.0.0.1:5432 (trust auth, database ``test``). On a
laptop without it they skip with a clear message; under CI (``CI=true``) a missing server fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.ci_no_skips"]  # under CI=true, any skip is a failure

PG_ADMIN_URL = os.environ.get("CUSTODY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # in the repository: see its README
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _share_httpx_default_tls_context() -> None:
    """Every ``httpx.Client`` made with the default ``verify=True`` (each ``httpx.get``/``post``
    makes one) gets the same CA-verifying SSL context, built once per test process.

    httpx builds a new context per client, loading certifi's ~150 CA certificates (20-25 ms of
    CPU): test_redteam_requests and test_authz_matrix (1,394 tests) built 2,564 and spent half
    their time there, for loopback ``http://`` URLs that never use TLS. The context is what
    ``httpx.create_ssl_context()`` returns (certifi's roots, hostname checks); no client of the
    suite asks for HTTP/2, so the ALPN list httpcore sets on it is always ``http/1.1``. An
    explicit ``verify`` (a context, ``False``, a path) or a client certificate is built as before.
    """
    import httpx._transports.default as transports

    build = transports.create_ssl_context
    shared: dict[tuple[str | None, str | None], Any] = {}

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is not True or cert is not None or not trust_env:
            return build(verify=verify, cert=cert, trust_env=trust_env)
        key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in shared:
            shared[key] = build(verify=verify, cert=cert, trust_env=trust_env)
        return shared[key]

    transports.create_ssl_context = create_ssl_context  # type: ignore[assignment]


def _share_genai_default_tls_contexts() -> None:
    """google-genai builds three CA-verifying SSL contexts for each ``genai.Client`` (for httpx,
    aiohttp and websockets; 55 ms of CPU); in a test process the clients share one per
    ``ssl.create_default_context`` argument set. Every client of the suite talks to a loopback
    ``http://`` URL, where no context is used, and none of them is changed after it is made
    (httpcore sets its ALPN list only when it opens a TLS connection)."""
    import ssl
    import types

    from google.genai import _api_client

    shared: dict[tuple[Any, ...], ssl.SSLContext] = {}

    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        key = (purpose, cafile, capath, cadata)
        if key not in shared:
            shared[key] = ssl.create_default_context(
                purpose, cafile=cafile, capath=capath, cadata=cadata
            )
        return shared[key]

    module = types.ModuleType("ssl")
    module.__dict__.update(vars(ssl))
    module.create_default_context = create_default_context  # type: ignore[attr-defined]
    _api_client.ssl = module  # type: ignore[attr-defined]


_share_httpx_default_tls_context()
_share_genai_default_tls_contexts()


def _skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: nothing may skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: photographs, credentialed images and test vectors, with their licences."""
    return FIXTURES


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"


@contextmanager
def new_pg_database(prefix: str = "custody_t", template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (its URL), dropped when the block ends: empty, or a copy of the
    database ``template`` (which no session may be connected to)."""
    problem = _pg_available()
    if problem:
        _skip_or_fail(problem)
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_head_template() -> Iterator[str]:
    """The name of a PostgreSQL database migrated to the newest schema, built once per test
    process (each xdist worker has its own, so no other session is ever connected to it while a
    test copies it) and dropped at the end; ``@pytest.mark.pg_at_head`` tests get copies."""
    from storage.db import migrate

    with new_pg_database("custody_head") as url:
        migrate(url)  # alembic's engine (NullPool) is disposed: nothing stays connected
        yield url.rsplit("/", 1)[1]


@pytest.fixture()
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for one test; dropped afterwards.

    Empty, unless the test is marked ``@pytest.mark.pg_at_head``: then a copy of a database
    migrated to the newest schema (``CREATE DATABASE ... TEMPLATE``, 0.05-0.1 s, where
    migrating an empty one takes 0.2-0.75 s). Only for a test whose code migrates the database
    before anything else (``start_custody``, ``migrate``, ``open_ledger``): that migration then
    finds the schema at head and does nothing. A test of migrating itself keeps an empty one.
    """
    template = None
    if request.node.get_closest_marker("pg_at_head") is not None:
        template = request.getfixturevalue("pg_head_template")
    with new_pg_database(template=template) as url:
        yield url


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'custody.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'custody.db'}"
    else:
        yield request.getfixturevalue("pg_url")


# --- a real Custody server on 127.0.0.1, driven by the real google-genai SDK -------------------


class RunningCustody:
    """A Custody gateway serving on loopback, with keys for each role."""

    def __init__(self, server: object, services: object, keys: dict[str, str]) -> None:
        self.server = server
        self.services = services
        self.keys = keys

    @property
    def base_url(self) -> str:
        return self.server.base_url  # type: ignore[attr-defined,no-any-return]

    def stop(self) -> None:
        """Stop serving and close the services (database, ledger, upstream client)."""
        import asyncio

        self.server.stop()  # type: ignore[attr-defined]
        asyncio.run(self.services.aclose())  # type: ignore[attr-defined]

    def client(self, role: str = "editor", api_version: str | None = None) -> object:
        """A google-genai client pointed at this gateway, as an integrating app would set it up."""
        from google import genai
        from google.genai import types

        # Kept alive with the server: google-genai 3.x closes its HTTP client when the Client
        # object is collected, which a chained ``custody.client().models...`` call would trigger.
        cache = self.__dict__.setdefault("_clients", {})
        if (role, api_version) not in cache:
            opts = types.HttpOptions(base_url=self.base_url, api_version=api_version)
            cache[(role, api_version)] = genai.Client(api_key=self.keys[role], http_options=opts)
        return cache[(role, api_version)]

    def ledger_events(self, turn_id: str | None = None) -> list[dict[str, object]]:
        """Every ledger event (decoded leaf), optionally of one turn."""
        from storage.ledger.leaf import decode_leaf

        ledger = self.services.ledger  # type: ignore[attr-defined]
        out = []
        size = ledger.size()
        for start in range(0, size, 1000):
            for entry in ledger.entries(start, min(size, start + 1000)):
                leaf = decode_leaf(entry.leaf)
                leaf["index"] = entry.index
                if turn_id is None or leaf.get("turn") == turn_id:
                    out.append(leaf)
        return out


def start_custody(data_dir: Path, database_url: str = "", **overrides: object) -> RunningCustody:
    """Build services, create one key per role, serve the app on a free loopback port."""
    from governance.app import create_app, server_options
    from governance.auth.keys import create_key
    from governance.services import build_services
    from governance.settings import Settings
    from governance.upstream.embedded import ThreadedServer

    settings = Settings(
        data_dir=data_dir, database_url=database_url, checkpoint_every_ms=200, **overrides
    )
    services = build_services(settings)
    keys = {
        role: create_key(services.engine, tenant="acme", actor=f"{role}@acme", roles=[role])
        for role in ("editor", "reviewer", "auditor", "admin")
    }
    keys["other-tenant-editor"] = create_key(
        services.engine, tenant="globex", actor="editor@globex", roles=["editor"]
    )
    app = create_app(settings, services=services)
    server = ThreadedServer(app, **server_options(app)).start()
    return RunningCustody(server, services, keys)


@pytest.fixture()
def custody(tmp_path: Path) -> Iterator[RunningCustody]:
    """A running gateway on SQLite with the built-in emulator upstream."""
    running = start_custody(tmp_path / "custody")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def photo_bytes(fixtures_dir: Path) -> dict[str, bytes]:
    """The real photographs of tests/fixtures/photos, by file name."""
    folder = fixtures_dir / "photos"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# A policy for route tests: allow, except one word denied and one held for review.
TEST_POLICY = """package custody

default decision := {"outcome": "allow", "reasons": [], "obligations": {}}

decision := {"outcome": "deny", "reasons": ["the test policy refuses 'forbidden-word'"],
  "obligations": {}} if {
  contains(lower(input.request.prompt), "forbidden-word")
}

decision := {"outcome": "review", "reasons": ["the test policy reviews 'needs-a-human'"],
  "obligations": {}} if {
  contains(lower(input.request.prompt), "needs-a-human")
}
"""


def write_test_policy(tmp_path: Path) -> Path:
    """A policy directory holding ``TEST_POLICY`` only."""
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "custody.rego").write_text(TEST_POLICY)
    return policy_dir


async def asgi_request_ready(scope: dict[str, object], receive: object, send: object) -> bool:
    """For a test's raw ASGI upstream: answer the lifespan protocol (False: nothing more to do),
    or read the request body to its end (True: answer the request)."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":  # type: ignore[operator]
            await send({"type": message["type"] + ".complete"})  # type: ignore[operator]
        await send({"type": "lifespan.shutdown.complete"})  # type: ignore[operator]
        return False
    while (await receive()).get("more_body"):  # type: ignore[operator]
        pass
    return True


# --- Debian's Chromium, driven by Playwright (never a downloaded browser) -----------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """A headless Chromium for one test module (``@pytest.mark.browser`` tests)."""
    if not CHROMIUM.is_file():
        _skip_or_fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the machine
        _skip_or_fail(f"playwright is not installed: {exc}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context's page (no cookies from another test)."""
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()
