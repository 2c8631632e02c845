"""The ``api_keys`` table: who holds each key, what it may do, and where it is in its life.

Created by ``0001_core`` and extended by ``0005_key_lifecycle``. The secret's hash is a column
here and nowhere else: nothing that leaves the key store (listings, ledger events) is built
from it. ``revoked_ms`` may lie in the future (a key rotated with a grace period).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table, Text, text
from sqlmodel import Field, SQLModel


class ApiKey(SQLModel, table=True):
    """One API key: who holds it, what it may do, and where it is in its life."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_expires", "expires_ms"),)

    key_id: str = Field(sa_column=Column(String(32), primary_key=True))
    secret_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    tenant: str = Field(sa_column=Column(String(128), nullable=False, index=True))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    roles: str = Field(sa_column=Column(String(256), nullable=False))  # comma-separated, sorted
    # The empty string as SQL (``''``), not as a Python ``""``: Alembic's SQLite comparison
    # reads the database's ``''`` back as two quote characters and would see a change.
    label: str = Field(
        default="", sa_column=Column(String(256), nullable=False, server_default=text("''"))
    )
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_ms: int | None = Field(default=None, sa_column=Column(BigInteger))  # may be future
    expires_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    revoked_by: str | None = Field(default=None, sa_column=Column(String(256)))
    revoke_reason: str | None = Field(default=None, sa_column=Column(Text))
    rotated_to: str | None = Field(default=None, sa_column=Column(String(32)))
    rotated_from: str | None = Field(default=None, sa_column=Column(String(32)))
    last_used_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    expiry_recorded_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


API_KEYS: Table = ApiKey.__table__  # type: ignore[attr-defined]
