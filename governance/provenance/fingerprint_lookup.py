"""From a copy with no manifest and unknown bytes to the turns whose images look like it.

When an image carries no Content Credentials and its hash names no turn (a social network
re-encoded and resized it, so both its bytes and its manifest are gone), its PDQ hash is looked
up in the fingerprint index (``storage.fingerprint_index``: multi-index hashing, exact within
``MATCH_DISTANCE``). Each candidate turn comes with its distances and its ledger record, every
entry proven against the latest checkpoint (``lookup.turn_record``).

Thresholds (docs/provenance.md has the measurements behind them): a candidate is a recorded image
of PDQ quality ≥ 50 (flatter images all look alike to PDQ; a query that flat is not looked up)
within PDQ distance 31 of 256 bits — Meta's published operating point for PDQ, below which
matches are near-certainly the same picture, and the largest radius the 16-band index searches
without a miss. Unrelated photographs sit near 128. The ISCC Image-Code distance (of 64 bits) is
reported beside it as a second, independent opinion; it does not filter.

Tenant walls: the search itself is scoped to the caller's tenant (an operator's: every tenant),
so a candidate of another tenant is never read, let alone shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from governance.provenance.fingerprint import (
    PDQ_BITS,
    PDQ_MIN_QUALITY,
    Fingerprint,
    fingerprint,
    iscc_distance,
)
from governance.provenance.lookup import turn_record
from storage.blobs import Commitments
from storage.fingerprint_index import MAX_DISTANCE, FingerprintMatch, find_similar
from storage.ledger.log import Ledger

MATCH_DISTANCE = MAX_DISTANCE  # 31 of 256 bits
MAX_CANDIDATES = 5


@dataclass(frozen=True)
class Candidate:
    """A turn one of whose images is within ``MATCH_DISTANCE`` of the image looked up."""

    turn_id: str
    direction: str  # the turn's image that matched: "output" (released) or "input"
    role: str
    pdq_distance: int
    iscc_distance: int
    record: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "turn_id": self.turn_id,
            "direction": self.direction,
            "role": self.role,
            "pdq_distance": self.pdq_distance,
            "pdq_bits": PDQ_BITS,
            "iscc_distance": self.iscc_distance,
            "ledger": self.record,
        }


@dataclass(frozen=True)
class FingerprintLookup:
    """What the index says about one image: its fingerprints and the candidate turns."""

    fingerprint: Fingerprint | None
    candidates: list[Candidate]

    @property
    def note(self) -> str:
        if self.fingerprint is None:
            return "the image could not be decoded, so it has no fingerprint to look up"
        if self.fingerprint.pdq_quality < PDQ_MIN_QUALITY:
            return (
                f"the image is too flat for PDQ (quality {self.fingerprint.pdq_quality} <"
                f" {PDQ_MIN_QUALITY}): flat images look alike to it, so it was not looked up"
            )
        if not self.candidates:
            return f"no recorded image within PDQ distance {MATCH_DISTANCE} of {PDQ_BITS} bits"
        return (
            f"{len(self.candidates)} turn(s) with an image within PDQ distance {MATCH_DISTANCE}"
            f" of {PDQ_BITS} bits, nearest first"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
            "max_distance": MATCH_DISTANCE,
            "note": self.note,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def look_up_by_fingerprint(
    read_engine: Engine,
    ledger: Ledger,
    image: bytes,
    *,
    viewer_tenant: str | None,
    commitments: Commitments | None = None,
    may_sign: bool = True,
) -> FingerprintLookup:
    """The candidate turns of ``image`` in ``viewer_tenant`` (None: every tenant), each with its
    proven ledger record. Blocking (decoding, hashing, database): run it in a worker thread.
    Raises ``NotYetCheckpointed`` like ``turn_record`` for a caller who may not sign."""
    found = fingerprint(image)
    if found is None or found.pdq_quality < PDQ_MIN_QUALITY:
        return FingerprintLookup(found, [])
    matches = find_similar(
        read_engine,
        found.pdq,
        tenant=viewer_tenant,
        max_distance=MATCH_DISTANCE,
        limit=MAX_CANDIDATES * 4,
    )
    # One candidate per turn, represented by its nearest released image when one matched (the
    # copy most likely came from what Custody released), else its nearest input; turns that
    # released a match come first, each group nearest first.
    chosen: dict[str, FingerprintMatch] = {}
    for match in matches:
        if match.pdq_quality < PDQ_MIN_QUALITY:
            continue  # a flat recorded image matches every flat image: no evidence
        best = chosen.get(match.turn_id)
        if best is None or _rank(match) < _rank(best):
            chosen[match.turn_id] = match
    ordered = sorted(chosen.values(), key=_rank)
    candidates = []
    for match in ordered[:MAX_CANDIDATES]:
        record = turn_record(
            ledger,
            match.turn_id,
            viewer_tenant=viewer_tenant,
            commitments=commitments,
            may_sign=may_sign,
        )
        candidates.append(
            Candidate(
                turn_id=match.turn_id,
                direction=match.direction,
                role=match.role,
                pdq_distance=match.pdq_distance,
                iscc_distance=iscc_distance(found.iscc, match.iscc),
                record=record,
            )
        )
    return FingerprintLookup(found, candidates)


def _rank(match: FingerprintMatch) -> tuple[bool, int, str]:
    return (match.direction != "output", match.pdq_distance, match.turn_id)
