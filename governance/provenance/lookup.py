"""From an image to its turn's record in the ledger, with every entry's inclusion proof checked.

An image is found by the ledger reference in its Custody assertion, or — when its metadata was
stripped — by its hash (the signed file's, or the upstream output's, which is what stripping the
manifest from a PNG or JPEG gives back).

Tenant walls: the record is shown to its own tenant and to an operator; anyone else learns only
that Custody released the image. Proofs are against the latest checkpoint, which a read signs
only for a caller allowed to sign checkpoints.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import Engine, case, or_, select

from storage.blobs import Commitments
from storage.ledger.checkpoint import Checkpoint
from storage.ledger.log import Ledger
from storage.ledger.merkle import ProofError, check_inclusion
from storage.schema.turns import TURN_IMAGES


def turn_for_hash(read_engine: Engine, sha256: str) -> str | None:
    """The turn that released an image with this hash (signed or as the upstream made it).

    The turn that *released* those exact bytes wins over one whose upstream returned them: an
    upstream that echoes an earlier Custody output hands back that turn's signed file.
    """
    images = TURN_IMAGES.c
    query = (
        select(images.turn_id)
        .where(
            images.direction == "output",
            or_(images.signed_sha256 == sha256, images.sha256 == sha256),
        )
        .order_by(case((images.signed_sha256 == sha256, 0), else_=1))
        .limit(1)
    )
    with read_engine.connect() as conn:
        row = conn.execute(query).first()
    return str(row[0]) if row else None


class NotYetCheckpointed(Exception):
    """An entry is newer than the latest checkpoint and this caller may not sign one."""

    def __init__(self, index: int, checkpoint_size: int, retry_ms: int | None) -> None:
        self.index = index
        self.checkpoint_size = checkpoint_size
        self.retry_ms = retry_ms
        when = (
            f"the background job signs one within {retry_ms} ms: retry then"
            if retry_ms
            else "timed checkpoints are off here: ask an admin or operator to sign one"
            " (POST /api/v1/ledger/checkpoint)"
        )
        super().__init__(
            f"entry {index} is not yet checkpointed (the latest checkpoint covers"
            f" {checkpoint_size} entries); {when}."
        )


def checkpoint_retry_ms(checkpoint_every_ms: int) -> int | None:
    """How long until the background job has signed a checkpoint covering today's entries:
    its interval plus one tick of the job (``governance.background``); None when it is off."""
    if checkpoint_every_ms <= 0:
        return None
    return checkpoint_every_ms + max(checkpoint_every_ms // 2, 50)


def checkpoint_covering(ledger: Ledger, index: int, *, may_sign: bool) -> Checkpoint:
    """The latest checkpoint, which must cover entry ``index``: signed now only for a caller
    who may sign (an admin, an operator, the local CLI holding the key), else
    ``NotYetCheckpointed`` — a read never signs on an auditor's behalf."""
    cp = ledger.latest_checkpoint()
    if index < cp.size:
        return cp
    if may_sign:
        return ledger.issue_checkpoint()
    raise NotYetCheckpointed(index, cp.size, checkpoint_retry_ms(ledger.checkpoint_every_ms))


OTHER_TENANT = "this image was released by Custody; the record belongs to another tenant"
NOT_RELEASED_OTHER_TENANT = "Custody has a record of this image; it belongs to another tenant"


def turn_record(
    ledger: Ledger,
    turn_id: str,
    *,
    viewer_tenant: str | None,
    commitments: Commitments | None = None,
    may_sign: bool = True,
) -> dict[str, Any] | None:
    """The turn's events, each proven against the latest checkpoint; None if unknown.

    Only the turn's own tenant (``viewer_tenant=None`` means an operator, who sees every tenant)
    gets the record: another tenant learns that Custody released the image and nothing else — no
    tenant name, no turn id, no timeline. ``may_sign`` is False for a caller who may not sign
    checkpoints: an entry newer than the latest checkpoint then raises ``NotYetCheckpointed``
    instead of signing one (the CLI holds the log key: it signs).
    """
    entries = ledger.entries_for_turn(turn_id)
    if not entries:
        return None
    tenant = entries[0].event.tenant
    if viewer_tenant is not None and viewer_tenant != tenant:
        released = any(e.event.type == "turn.released" for e in entries)
        return {
            "visible": False,
            "released_by_custody": released,
            "message": OTHER_TENANT if released else NOT_RELEASED_OTHER_TENANT,
        }
    cp = checkpoint_covering(ledger, max(e.index for e in entries), may_sign=may_sign)
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
            "actor": e.event.actor,
            "body": e.event.body,
        }
        committed = e.event.body.get("prompt") if e.event.type == "turn.received" else None
        if commitments is not None and isinstance(committed, str) and prompt is None:
            data = commitments.open(committed)
            prompt = data.decode("utf-8", "replace") if data is not None else None
        events.append(item)
    return {
        "turn_id": turn_id,
        "tenant": tenant,
        "visible": True,
        "released_by_custody": any(e.event.type == "turn.released" for e in entries),
        "proofs_verified": all_ok,
        "checkpoint": {
            "origin": cp.origin,
            "size": cp.size,
            "root": base64.b64encode(cp.root).decode(),
            "note": cp.note,
        },
        "events": events,
        "actor": entries[0].event.actor,
        "prompt": prompt,
    }
