"""Console sessions: a random cookie value, stored only as its SHA-256, ended server-side.

A session ends when it expires (``console_session_ttl_s`` after sign-in), when it has been idle
for ``console_session_idle_s``, when its person signs out, or when the account is disabled or its
password changed (``governance.accounts.store``) — in every gateway process on the database at
once, since each request reads the session's row. ``console.signed_in`` and
``console.signed_out`` name the account and a prefix of the stored hash, never the cookie value.

Forms carry a CSRF token bound to the session: an HMAC of a fixed label under the cookie value,
which a page of another origin can neither read nor compute.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, text

from governance.accounts.store import Account, Accounts
from governance.auth.keys import now_ms
from governance.ledger_vocabulary import ledger_event
from storage.ledger.log import Ledger
from storage.schema.accounts import CONSOLE_SESSIONS

LAST_SEEN_EVERY_MS = 60_000  # a session's last-seen time is written at most once a minute
MAX_TOKEN = 128


def session_digest(token: str) -> str:
    """The stored form of a session cookie's value."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_ref(digest: str) -> str:
    """How events name a session: a prefix of its stored hash."""
    return digest[:16]


def csrf_token(session_token: str) -> str:
    """The CSRF token of every form of this session."""
    return hmac.new(session_token.encode(), b"custody-console-csrf", hashlib.sha256).hexdigest()


def csrf_matches(expected: str, presented: str) -> bool:
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


@dataclass(frozen=True)
class Session:
    """A live session and the account it belongs to."""

    token: str
    digest: str
    account: Account
    expires_ms: int

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


class ConsoleSessions:
    """Open, resolve and end console sessions."""

    def __init__(self, engine: Engine, ledger: Ledger, *, ttl_ms: int, idle_ms: int) -> None:
        self.engine = engine
        self.ledger = ledger
        self.ttl_ms = ttl_ms
        self.idle_ms = idle_ms
        self.accounts = Accounts(engine, ledger)

    def open(self, account: Account) -> Session:
        """A new session for a signed-in account: its row, then ``console.signed_in``."""
        token = secrets.token_urlsafe(32)
        digest = session_digest(token)
        now = now_ms()
        expires = now + self.ttl_ms
        with self.engine.begin() as conn:
            conn.execute(
                insert(CONSOLE_SESSIONS).values(
                    session_sha256=digest,
                    account_id=account.account_id,
                    tenant=account.tenant,
                    created_ms=now,
                    expires_ms=expires,
                    last_seen_ms=now,
                )
            )
        event = ledger_event(
            "console.signed_in",
            {"account": account.summary(), "session": session_ref(digest), "expires_ms": expires},
            tenant=account.tenant,
            actor=account.username,
        )
        try:
            self.ledger.append([event])
        except Exception:
            with self.engine.begin() as conn:  # unrecorded sign-ins do not exist
                conn.execute(
                    CONSOLE_SESSIONS.delete().where(CONSOLE_SESSIONS.c.session_sha256 == digest)
                )
            raise
        return Session(token, digest, account, expires)

    def resolve(self, token: str) -> Session | None:
        """The live session of this cookie value, or None (unknown, ended, account disabled)."""
        if not token or len(token) > MAX_TOKEN:
            return None
        digest = session_digest(token)
        now = now_ms()
        with self.engine.connect() as conn:
            row = conn.execute(
                select(CONSOLE_SESSIONS).where(CONSOLE_SESSIONS.c.session_sha256 == digest)
            ).first()
        if row is None or row.revoked_ms is not None or row.expires_ms <= now:
            return None
        if self.idle_ms > 0 and row.last_seen_ms + self.idle_ms <= now:
            return None
        account = self.accounts.get(row.account_id)
        if account is None or account.disabled:
            return None
        if now - row.last_seen_ms >= LAST_SEEN_EVERY_MS:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE console_sessions SET last_seen_ms = :now"
                        " WHERE session_sha256 = :d AND last_seen_ms < :now"
                    ),
                    {"now": now, "d": digest},
                )
        return Session(token, digest, account, int(row.expires_ms))

    def close(self, session: Session) -> bool:
        """End the session now; ``console.signed_out`` when it was still open."""
        with self.engine.begin() as conn:
            ended = conn.execute(
                text(
                    "UPDATE console_sessions SET revoked_ms = :now"
                    " WHERE session_sha256 = :d AND revoked_ms IS NULL"
                ),
                {"now": now_ms(), "d": session.digest},
            ).rowcount
        if ended:
            account = session.account
            self.ledger.append(
                [
                    ledger_event(
                        "console.signed_out",
                        {"account": account.summary(), "session": session_ref(session.digest)},
                        tenant=account.tenant,
                        actor=account.username,
                    )
                ]
            )
        return bool(ended)
