"""People who sign in to the review console, and their console sessions.

Alembic creates these tables (``storage/migrations/versions/0007_console_accounts.py``); the
models must match it and never create tables themselves. An account has the same roles as an API
key (``editor``, ``reviewer``, ``auditor``, ``admin``, ``operator``) and the reviewer groups it
belongs to. Only an argon2 hash of its password is stored. A session is stored by the SHA-256 of
its cookie value, so a copy of the database does not let anyone sign in; ``revoked_ms`` ends it
on every process at once (sign-out, a disabled account, a changed password).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class ConsoleAccount(SQLModel, table=True):
    """One person: who they are in which tenant, what they may do, and how they prove it."""

    __tablename__ = "console_accounts"
    __table_args__ = (UniqueConstraint("tenant", "username", name="uq_console_accounts_name"),)

    account_id: str = Field(sa_column=Column(String(32), primary_key=True))
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    username: str = Field(sa_column=Column(String(128), nullable=False))
    display_name: str = Field(default="", sa_column=Column(String(256), nullable=False))
    roles: str = Field(sa_column=Column(String(256), nullable=False))  # comma-separated, sorted
    groups: str = Field(default="", sa_column=Column(String(1024), nullable=False))  # comma list
    password_hash: str = Field(sa_column=Column(Text, nullable=False))  # argon2id, PHC string
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    password_changed_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    disabled_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    disabled_by: str | None = Field(default=None, sa_column=Column(String(256)))
    failed_sign_ins: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    throttled_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


class ConsoleSession(SQLModel, table=True):
    """One signed-in browser: valid until it expires, idles out or is revoked."""

    __tablename__ = "console_sessions"

    session_sha256: str = Field(sa_column=Column(String(64), primary_key=True))
    account_id: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    tenant: str = Field(sa_column=Column(String(128), nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_seen_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


class SignInMiss(SQLModel, table=True):
    """Failed sign-ins under a (tenant, username) that names no account, counted like an
    account's own (``failed_sign_ins``, ``throttled_until_ms``) so that the throttling answer
    does not tell which accounts exist. Keyed by the SHA-256 of the pair, never the name
    (people type passwords into the username field). Created by ``0013_sign_in_misses``."""

    __tablename__ = "console_sign_in_misses"

    name_sha256: str = Field(sa_column=Column(String(64), primary_key=True))
    failed_sign_ins: int = Field(sa_column=Column(Integer, nullable=False))
    throttled_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_failed_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


CONSOLE_ACCOUNTS: Table = ConsoleAccount.__table__  # type: ignore[attr-defined]
CONSOLE_SESSIONS: Table = ConsoleSession.__table__  # type: ignore[attr-defined]
SIGN_IN_MISSES: Table = SignInMiss.__table__  # type: ignore[attr-defined]
