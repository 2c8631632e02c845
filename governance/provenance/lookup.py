"""From an image to its turn's record in the ledger, with every entry's inclusion proof checked.

An image is found by the ledger reference in its Custody assertion, or — when its metadata was
stripped — by its hash (the signed file's, or the upstream output's, which is what stripping the
manifest from a PNG or JPEG gives back).
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import Engine, text

from storage.blobs import Commitments
from storage.ledger.log import Ledger
from storage.ledger.merkle import ProofError, check_inclusion


def turn_for_hash(read_engine: Engine, sha256: str) -> str | None:
    """The turn that released an image with this hash (signed or as the upstream made it).

    The turn that *released* those exact bytes wins over one whose upstream returned them: an
    upstream that echoes an earlier Custody output hands back that turn's signed file.
    """
    with read_engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT turn_id FROM turn_images WHERE direction = 'output'"
                " AND (signed_sha256 = :h OR sha256 = :h)"
                " ORDER BY CASE WHEN signed_sha256 = :h THEN 0 ELSE 1 END LIMIT 1"
            ),
            {"h": sha256},
        ).first()
    return str(row[0]) if row else None


def turn_record(
    ledger: Ledger,
    turn_id: str,
    *,
    viewer_tenant: str | None,
    commitments: Commitments | None = None,
) -> dict[str, Any] | None:
    """The turn's events, each proven against the latest checkpoint; None if unknown.

    Event bodies (and the prompt, opened from its commitment) are shown only to the turn's own
    tenant (``viewer_tenant=None`` means an operator who sees everything).
    """
    entries = ledger.entries_for_turn(turn_id)
    if not entries:
        return None
    cp = ledger.latest_checkpoint()
    if max(e.index for e in entries) >= cp.size:
        cp = ledger.issue_checkpoint()
    tenant = entries[0].event.tenant
    visible = viewer_tenant is None or viewer_tenant == tenant
    events = []
    all_ok = True
    prompt: str | None = None
    for e in entries:
        proof = ledger.prove_inclusion(e.index, cp.size)
        try:
            check_inclusion(proof, cp.size, cp.root, e.index, e.leaf_hash)
            proven = True
        except ProofError:
            proven = all_ok = False
        item: dict[str, Any] = {
            "index": e.index,
            "type": e.event.type,
            "time_ms": e.time_ms,
            "proven": proven,
        }
        if visible:
            item.update(actor=e.event.actor, body=e.event.body)
            committed = e.event.body.get("prompt") if e.event.type == "turn.received" else None
            if commitments is not None and isinstance(committed, str) and prompt is None:
                data = commitments.open(committed)
                prompt = data.decode("utf-8", "replace") if data is not None else None
        events.append(item)
    record: dict[str, Any] = {
        "turn_id": turn_id,
        "tenant": tenant,
        "visible": visible,
        "proofs_verified": all_ok,
        "checkpoint": {
            "origin": cp.origin,
            "size": cp.size,
            "root": base64.b64encode(cp.root).decode(),
            "note": cp.note,
        },
        "events": events,
    }
    if visible:
        record["actor"] = entries[0].event.actor
        record["prompt"] = prompt
    return record
