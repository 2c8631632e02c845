"""Custody API keys: ``ck_<key id>_<secret>``; only the SHA-256 of the secret is stored.

``KeyRing`` authenticates a presented key. What a key *is* (tenant, actor, roles, secret hash,
expiry) never changes after creation, so it is cached, in a bounded LRU that only keys found in
the database enter (unknown key ids cannot grow it). Whether a key is still *alive* changes when
any process revokes or rotates it, so that is read on every request: one primary-key lookup of
``revoked_ms`` and ``expires_ms``. A revocation by the CLI, or by another gateway on the same
database, is therefore refused on the very next request, with no cache to wait out.

That lookup runs on a small pool of its own autocommit connections, through the DB-API cursor:
no pre-ping, no BEGIN/ROLLBACK, no SQLAlchemy statement layer, which are most of the cost of a
one-row read (``bench/key_auth_bench.py`` measures it against those floors).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError

from governance.auth.principal import ROLES, Principal
from governance.settings import KEY_PREFIX

MAX_PRESENTED = 200
CACHE_SIZE = 4096

Refusal = Literal["malformed", "unknown", "revoked", "expired"]


class KeyError_(Exception):
    """A key could not be created (bad role or tenant)."""


def secret_digest(secret: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


def check_key_fields(*, tenant: str, actor: str, roles: list[str]) -> str:
    """The roles column for a new key, or ``KeyError_`` saying what is wrong."""
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise KeyError_(f"unknown role(s) {bad or roles}; choose from {', '.join(ROLES)}")
    if not tenant or not actor:
        raise KeyError_("a key needs a tenant and an actor")
    if len(tenant) > 128 or len(actor) > 256:
        raise KeyError_("a tenant is at most 128 characters and an actor at most 256")
    return ",".join(sorted(set(roles)))


def new_key_material() -> tuple[str, str, str]:
    """A fresh key id, the full key to hand out once, and the digest to store."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}", secret_digest(secret)


def create_key(
    engine: Engine, *, tenant: str, actor: str, roles: list[str], label: str = ""
) -> str:
    """Store a key without a ledger event; returns the full key, shown once.

    For fixtures that build an installation before its ledger matters. Everything an operator
    does goes through ``governance.auth.lifecycle.KeyLifecycle.create``, which records the
    ``key.created`` event in the same transaction as the key.
    """
    roles_column = check_key_fields(tenant=tenant, actor=actor, roles=roles)
    key_id, key, digest = new_key_material()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (key_id, secret_sha256, tenant, actor, roles, label,"
                " created_ms) VALUES (:k, :s, :t, :a, :r, :l, :c)"
            ),
            {
                "k": key_id,
                "s": digest,
                "t": tenant,
                "a": actor,
                "r": roles_column,
                "l": label,
                "c": now_ms(),
            },
        )
    return key


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if not presented.startswith(KEY_PREFIX) or len(presented) > MAX_PRESENTED:
        return None
    key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


@dataclass(frozen=True)
class _Known:
    principal: Principal
    digest: str


_FULL = text(
    "SELECT secret_sha256, tenant, actor, roles, revoked_ms, expires_ms FROM api_keys"
    " WHERE key_id = :k"
)


class _LivenessReader:
    """``revoked_ms, expires_ms`` of one key, read on a pooled autocommit DB-API connection."""

    def __init__(self, engine: Engine, pool_size: int = 4) -> None:
        url = engine.url
        self.is_sqlite = url.get_backend_name() == "sqlite"
        connect_args: dict[str, Any] = (
            {"check_same_thread": False} if self.is_sqlite else {"autocommit": True}
        )
        self.engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=4 * pool_size,
            pool_pre_ping=False,
            pool_reset_on_return=None,  # autocommit: there is never a transaction to reset
            connect_args=connect_args,
        )
        if self.is_sqlite:

            @event.listens_for(self.engine, "connect")
            def _autocommit(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None
                dbapi_conn.execute("PRAGMA busy_timeout=30000")

        mark = "?" if self.is_sqlite else "%s"
        self.sql = f"SELECT revoked_ms, expires_ms FROM api_keys WHERE key_id = {mark}"

    def read(self, key_id: str) -> tuple[int | None, int | None] | None:
        """(revoked_ms, expires_ms), or None when the key does not exist. A connection that
        fails (a restarted server) is dropped and the read tried once on a fresh one."""
        for attempt in (1, 2):
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                try:
                    cur.execute(self.sql, (key_id,))
                    row = cur.fetchone()
                finally:
                    cur.close()
            except (DBAPIError, self.engine.dialect.loaded_dbapi.Error):
                raw.invalidate()
                if attempt == 2:
                    raise
                continue
            finally:
                raw.close()
            return None if row is None else (row[0], row[1])
        return None  # not reached: the second failure raises

    def close(self) -> None:
        self.engine.dispose()


class KeyRing:
    """Authenticates presented keys: identity cached (bounded), liveness checked every time."""

    def __init__(self, engine: Engine, cache_size: int = CACHE_SIZE) -> None:
        self._engine = engine
        self._liveness = _LivenessReader(engine)
        self._cache: OrderedDict[str, _Known] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._used: dict[str, int] = {}

    def authenticate(self, presented: str) -> Principal | None:
        """The principal for ``presented``, or None for a malformed, unknown, revoked or
        expired key."""
        found = self.identify(presented)
        return found if isinstance(found, Principal) else None

    def identify(self, presented: str) -> Principal | Refusal:
        """The principal for ``presented``, or why it is refused. Revoked and expired are told
        apart only for a caller who holds the right secret."""
        parsed = parse_key(presented)
        if parsed is None:
            return "malformed"
        key_id, secret = parsed
        with self._lock:
            known = self._cache.get(key_id)
            if known is not None:
                self._cache.move_to_end(key_id)
        if known is None:
            with self._engine.connect() as conn:
                row = conn.execute(_FULL, {"k": key_id}).first()
            if row is None:
                return "unknown"
            roles = frozenset(r for r in row.roles.split(",") if r)
            known = _Known(Principal(key_id, row.tenant, row.actor, roles), row.secret_sha256)
            self._remember(key_id, known)
            state = (row.revoked_ms, row.expires_ms)
        else:
            read = self._liveness.read(key_id)
            if read is None:
                self.forget(key_id)
                return "unknown"
            state = read
        if not hmac.compare_digest(known.digest, secret_digest(secret)):
            return "unknown"
        now = now_ms()
        revoked_ms, expires_ms = state
        if revoked_ms is not None and revoked_ms <= now:
            return "revoked"
        if expires_ms is not None and expires_ms <= now:
            return "expired"
        self._used[key_id] = now
        return known.principal

    def cached_principal(self, presented: str) -> Principal | None:
        """The principal of ``presented`` if the cache holds its identity and the secret matches;
        no database read, so no liveness check: for attributing a refusal, never for admitting
        a request."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        with self._lock:
            known = self._cache.get(parsed[0])
        if known is None or not hmac.compare_digest(known.digest, secret_digest(parsed[1])):
            return None
        return known.principal

    def _remember(self, key_id: str, known: _Known) -> None:
        with self._lock:
            self._cache[key_id] = known
            self._cache.move_to_end(key_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it no longer exists)."""
        with self._lock:
            self._cache.pop(key_id, None)
            self._used.pop(key_id, None)

    @property
    def cached(self) -> int:
        """How many keys the cache holds (at most ``cache_size``)."""
        return len(self._cache)

    def take_last_used(self) -> dict[str, int]:
        """Key id → when it last authenticated, since the previous call (for ``last_used_ms``)."""
        with self._lock:
            used, self._used = self._used, {}
        return used

    def close(self) -> None:
        """Close the connections of the per-request check."""
        self._liveness.close()
