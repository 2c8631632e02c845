"""The ledger's tables, described for Alembic's autogenerate and for readers that want them.

Created by ``0002_ledger``. Plain SQLAlchemy tables, not models: the ledger's append path stays
on raw DB-API with cached statements (``storage/ledger/sqlite_store.py`` and
``postgres_store.py``), and its rows are only ever read as leaves. What these definitions cannot
say lives in the migration alone: the append-only triggers, the PostgreSQL append functions and
the ``custody_ledger_owner`` role, and the one ``ledger_head`` row (``id = 1``) it inserts.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text
from sqlmodel import SQLModel

LEDGER_ENTRIES = Table(
    "ledger_entries",
    SQLModel.metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("type", String(64), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("turn_id", String(64), nullable=True),
    Column("leaf", LargeBinary, nullable=False),  # RFC 8785 canonical JSON
    Column("leaf_hash", LargeBinary, nullable=False),  # SHA-256(0x00 || leaf)
    Index("ix_ledger_entries_turn", "turn_id"),
    Index("ix_ledger_entries_q_tenant", "tenant", "idx"),  # 0010_query_indexes
    Index("ix_ledger_entries_q_type", "tenant", "type", "idx"),
)

# The tlog stored-hash layout (storage/ledger/merkle.py): every complete subtree's hash, once.
LEDGER_HASHES = Table(
    "ledger_hashes",
    SQLModel.metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

# One row (id = 1): the log's size, locked by every append; it only grows.
LEDGER_HEAD = Table(
    "ledger_head",
    SQLModel.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
)

LEDGER_CHECKPOINTS = Table(
    "ledger_checkpoints",
    SQLModel.metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),  # the signed C2SP note
)
