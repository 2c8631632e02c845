"""Custody API keys: ``ck_<key id>_<secret>``; only the SHA-256 of the secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import Engine, text

from governance.auth.principal import ROLES, Principal

KEY_PREFIX = "ck_"


class KeyError_(Exception):
    """A key could not be created (bad role or tenant)."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    engine: Engine, *, tenant: str, actor: str, roles: list[str], label: str = ""
) -> str:
    """Create and store a key; returns the full key, which is shown once and never stored."""
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise KeyError_(f"unknown role(s) {bad or roles}; choose from {', '.join(ROLES)}")
    if not tenant or not actor:
        raise KeyError_("a key needs a tenant and an actor")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (key_id, secret_sha256, tenant, actor, roles, label,"
                " created_ms) VALUES (:k, :s, :t, :a, :r, :l, :c)"
            ),
            {
                "k": key_id,
                "s": _digest(secret),
                "t": tenant,
                "a": actor,
                "r": ",".join(sorted(set(roles))),
                "l": label,
                "c": int(time.time() * 1000),
            },
        )
    return f"{KEY_PREFIX}{key_id}_{secret}"


class KeyRing:
    """Looks keys up, with a small in-memory cache so the hot path does not hit the database."""

    def __init__(self, engine: Engine, cache_seconds: float = 5.0) -> None:
        self._engine = engine
        self._cache: dict[str, tuple[float, Principal | None, str]] = {}
        self._ttl = cache_seconds

    def authenticate(self, presented: str) -> Principal | None:
        """The principal for ``presented``, or None for a malformed, unknown or revoked key."""
        if not presented.startswith(KEY_PREFIX):
            return None
        key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
        if not sep or not key_id or not secret or len(presented) > 200:
            return None
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or now - cached[0] > self._ttl:
            cached = (now, *self._load(key_id))
            self._cache[key_id] = cached
        _, principal, digest = cached
        if principal is None or not hmac.compare_digest(digest, _digest(secret)):
            return None
        return principal

    def _load(self, key_id: str) -> tuple[Principal | None, str]:
        with self._engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT secret_sha256, tenant, actor, roles, revoked_ms FROM api_keys"
                    " WHERE key_id = :k"
                ),
                {"k": key_id},
            ).first()
        if row is None or row.revoked_ms is not None:
            return None, ""
        roles = frozenset(r for r in row.roles.split(",") if r)
        return Principal(key_id, row.tenant, row.actor, roles), row.secret_sha256
