"""Hamming-distance lookup of PDQ fingerprints that stays a few index probes at 10⁶ images.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index
Hashing", CVPR 2012): the 256-bit hash is cut into ``m = 16`` bands of 16 bits, each an indexed
column (``storage.schema.fingerprints``). By the pigeonhole principle, two hashes within Hamming
distance ``r`` agree to within ``⌊r / m⌋`` bits on at least one band. With ``MAX_DISTANCE = 31``
that is one bit: the candidates are the rows whose band ``n`` equals the query's band ``n`` or
one of its 16 one-bit neighbours, for any ``n`` — 16 × 17 index probes, one UNION query. Every
candidate's exact distance is then computed, so the answer is exactly the set of rows within
``max_distance`` (no false negatives up to 31, no false positives at all).

The search is always scoped by tenant in the query (``tenant=None`` only for an operator, who
sees every tenant): a tenant's lookup never reads another tenant's rows. Storage only: the
fingerprints themselves are computed by ``governance.provenance.fingerprint``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, union_all

from storage.schema.fingerprints import BAND_COLUMNS, BANDS, IMAGE_FINGERPRINTS

BAND_BITS = 256 // BANDS
MAX_DISTANCE = 2 * BANDS - 1  # the largest radius one-bit band probes find without a miss

FINGERPRINT_COLUMNS = (
    "turn_id",
    "tenant",
    "direction",
    "role",
    "content_index",
    "part_index",
    "sha256",
    "pdq",
    "pdq_quality",
    "iscc",
    *BAND_COLUMNS,
    "created_ms",
)


def pdq_bands(pdq_hex: str) -> tuple[int, ...]:
    """The 16 bands of a PDQ hash (64 hex digits), most significant first."""
    if len(pdq_hex) != 64:
        raise ValueError(f"a PDQ hash is 64 hex digits, not {len(pdq_hex)}")
    value = int(pdq_hex, 16)
    mask = (1 << BAND_BITS) - 1
    return tuple((value >> (BAND_BITS * (BANDS - 1 - n))) & mask for n in range(BANDS))


def fingerprint_row(
    *,
    turn_id: str,
    tenant: str,
    direction: str,
    role: str,
    content_index: int,
    part_index: int,
    sha256: str,
    pdq: str,
    pdq_quality: int,
    iscc: str,
    created_ms: int,
) -> tuple[Any, ...]:
    """One ``image_fingerprints`` row, in ``FINGERPRINT_COLUMNS`` order (bands derived)."""
    return (
        turn_id,
        tenant,
        direction,
        role,
        content_index,
        part_index,
        sha256,
        pdq,
        pdq_quality,
        iscc,
        *pdq_bands(pdq),
        created_ms,
    )


@dataclass(frozen=True)
class FingerprintMatch:
    """One recorded image within the searched distance of the query."""

    turn_id: str
    tenant: str
    direction: str
    role: str
    content_index: int
    part_index: int
    sha256: str
    pdq: str
    pdq_quality: int
    iscc: str
    pdq_distance: int


def _one_bit_neighbours(value: int) -> list[int]:
    return [value, *(value ^ (1 << bit) for bit in range(BAND_BITS))]


def find_similar(
    engine: Engine,
    pdq_hex: str,
    *,
    tenant: str | None,
    max_distance: int = MAX_DISTANCE,
    limit: int = 10,
) -> list[FingerprintMatch]:
    """The recorded images within ``max_distance`` bits of ``pdq_hex``, nearest first.

    ``tenant`` scopes the search (None: every tenant, for an operator). ``max_distance`` above
    ``MAX_DISTANCE`` is refused: the band probes could miss such a match, and a lookup that
    silently misses is worse than one that says it cannot look that far.
    """
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be within 0..{MAX_DISTANCE}, not {max_distance}")
    fp = IMAGE_FINGERPRINTS.c
    query_value = int(pdq_hex, 16)
    probes = []
    for name, band in zip(BAND_COLUMNS, pdq_bands(pdq_hex), strict=True):
        probe = select(fp.id, fp.pdq).where(fp[name].in_(_one_bit_neighbours(band)))
        if tenant is not None:
            probe = probe.where(fp.tenant == tenant)
        probes.append(probe)
    with engine.connect() as conn:
        # Two steps: the candidates' hashes only (a row sharing several bands comes back once per
        # band), then the few rows within the distance in full.
        distances: dict[int, int] = {}
        for row_id, pdq in conn.execute(union_all(*probes)):
            if row_id not in distances:
                distances[row_id] = (int(pdq, 16) ^ query_value).bit_count()
        near = [row_id for row_id, d in distances.items() if d <= max_distance]
        rows = conn.execute(select(IMAGE_FINGERPRINTS).where(fp.id.in_(near))).all() if near else []
    matches = [
        FingerprintMatch(
            turn_id=row.turn_id,
            tenant=row.tenant,
            direction=row.direction,
            role=row.role,
            content_index=row.content_index,
            part_index=row.part_index,
            sha256=row.sha256,
            pdq=row.pdq,
            pdq_quality=row.pdq_quality,
            iscc=row.iscc,
            pdq_distance=distances[row.id],
        )
        for row in rows
    ]
    matches.sort(key=lambda m: (m.pdq_distance, m.direction != "output", m.turn_id))
    return matches[:limit]
