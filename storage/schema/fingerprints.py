"""Perceptual fingerprints of every input and output image (migration ``0009_fingerprints``).

One row per image of a closed turn: its PDQ hash (256 bits, 64 hex digits), PDQ's quality and its
ISCC Image-Code, written in the same transaction as the turn's closing ledger event (side rows of
the append), like ``turn_images``. ``b0`` … ``b15`` are the PDQ hash cut into 16 bands of 16 bits
(``b0`` the most significant), each indexed: the multi-index lookup of
``storage.fingerprint_index`` reads only the rows that share a band value (or one bit off it) with
the image looked up, so a Hamming-distance search stays a few index probes at 10⁶ images.
``tenant`` is kept on the row so every lookup is scoped in the query itself.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table
from sqlmodel import SQLModel

BANDS = 16
BAND_COLUMNS = tuple(f"b{n}" for n in range(BANDS))

IMAGE_FINGERPRINTS = Table(
    "image_fingerprints",
    SQLModel.metadata,
    Column("id", Integer, primary_key=True),
    Column("turn_id", String(40), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("direction", String(8), nullable=False),  # input | output
    Column("role", String(16), nullable=False),  # parent | reference | mask | output
    Column("content_index", Integer, nullable=False),
    Column("part_index", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),  # of the bytes fingerprinted
    Column("pdq", String(64), nullable=False),
    Column("pdq_quality", Integer, nullable=False),
    Column("iscc", String(64), nullable=False),
    *(Column(name, Integer, nullable=False) for name in BAND_COLUMNS),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_image_fingerprints_turn", "turn_id"),
    *(Index(f"ix_image_fingerprints_{name}", name) for name in BAND_COLUMNS),
)
