"""The blob store's tables: content by digest, the salts of commitments to it, its erasures.

Created by ``0002_ledger``. ``blobs`` is used only when blobs live in the database (the file
store keeps them on disk); ``blob_commitments`` and ``blob_erasures`` always live here, since
commitment salts commit in the same transaction as the ledger events that name them. The guard
that a blob is deleted only after its erasure is recorded is a trigger, in the migration alone.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text
from sqlmodel import SQLModel

BLOBS = Table(
    "blobs",
    SQLModel.metadata,
    Column("digest", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

BLOB_COMMITMENTS = Table(
    "blob_commitments",
    SQLModel.metadata,
    Column("commitment", String(80), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("salt", LargeBinary, nullable=False),  # emptied when the blob is erased
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_blob_commitments_digest", "digest"),
)

BLOB_ERASURES = Table(
    "blob_erasures",
    SQLModel.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(64), nullable=False, index=True),
    Column("time_ms", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(256), nullable=False),
)
