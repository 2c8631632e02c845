"""What several replicas on one database agree through: rate counters, leases, the policy.

Created by ``0012_global_limits``.

- ``rate_counters``: one row per (window, actor or tenant) bucket — the key's SHA-256 — with
  the window's start and its turn and image counts. A reservation is one upsert per bucket
  (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``), atomic on SQLite and PostgreSQL, so
  replicas (and restarts) share one budget.
- ``leases``: one row per job that one replica at a time may run (the checkpoint signer): who
  holds it and until when. Taken and renewed with a conditional update.
- ``policy_revisions``: the policy revision the replicas decide with (``active``), written by
  whichever replica loads a new one first; every replica converges to it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, String, Table
from sqlmodel import SQLModel

RATE_COUNTERS = Table(
    "rate_counters",
    SQLModel.metadata,
    Column("bucket", String(64), primary_key=True),
    Column("started_ms", BigInteger, nullable=False),
    Column("turns", BigInteger, nullable=False),
    Column("images", BigInteger, nullable=False),
)

LEASES = Table(
    "leases",
    SQLModel.metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("acquired_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

POLICY_REVISIONS = Table(
    "policy_revisions",
    SQLModel.metadata,
    Column("name", String(32), primary_key=True),
    Column("revision", String(64), nullable=False),
    Column("recorded_ms", BigInteger, nullable=False),
    Column("recorded_by", String(128), nullable=False),
)
