"""The ``api_keys`` table as a SQLModel model: one schema source for the key code.

Alembic stays the migration path (``storage/migrations/versions/0001_core.py`` and
``0005_key_lifecycle.py`` create these columns); this model must match them and is never used to
create tables. Queries go through SQLAlchemy Core on ``API_KEYS`` (the model's table), the same on
SQLite and PostgreSQL. The secret's hash is a column here and nowhere else: nothing that leaves
the key store (listings, ledger events) is built from it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, String, Table, Text
from sqlmodel import Field, SQLModel


class ApiKey(SQLModel, table=True):
    """One API key: who holds it, what it may do, and where it is in its life."""

    __tablename__ = "api_keys"

    key_id: str = Field(sa_column=Column(String(32), primary_key=True))
    secret_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    tenant: str = Field(sa_column=Column(String(128), nullable=False, index=True))
    actor: str = Field(sa_column=Column(String(256), nullable=False))
    roles: str = Field(sa_column=Column(String(256), nullable=False))  # comma-separated, sorted
    label: str = Field(default="", sa_column=Column(String(256), nullable=False))
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
