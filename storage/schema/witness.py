"""Witness cosignatures and RFC 3161 timestamps of checkpoints (migration ``0011_witness``).

One row per (checkpoint size, witness key): the ``cosignature/v1`` line the witness returned,
verified against the witness's key before it is stored, and its timestamp. The newest
checkpoint with a quorum of rows is the one Custody publishes (``storage/ledger/witnessed.py``).
A witness's newest row is the size it last cosigned: the ``old`` size of the next request.

``ledger_checkpoint_timestamps`` holds, per checkpoint size, the DER RFC 3161 response of the TSA
of ``CUSTODY_EVIDENCE_TSA_URL`` over the checkpoint body (origin, size and root lines).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, String, Table, Text
from sqlmodel import SQLModel

LEDGER_COSIGNATURES = Table(
    "ledger_cosignatures",
    SQLModel.metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("witness_key", String(512), primary_key=True),  # the witness's verifier key string
    Column("witness", String(256), nullable=False),  # its name
    Column("line", Text, nullable=False),  # the note signature line, as sent
    Column("timestamp", BigInteger, nullable=False),  # seconds, as the witness signed it
    Column("received_ms", BigInteger, nullable=False),
    Index("ix_ledger_cosignatures_witness", "witness_key", "size"),
)

LEDGER_CHECKPOINT_TIMESTAMPS = Table(
    "ledger_checkpoint_timestamps",
    SQLModel.metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("token", LargeBinary, nullable=False),  # DER TimeStampResp over the checkpoint body
    Column("time_ms", BigInteger, nullable=False),
)
