"""Whether the approvals an image's manifest lists are real and covered exactly this image.

A manifest's approval names its ``review.decided`` ledger entry (``ledger_index``) and carries
what the reviewer was shown (``shown``: commitments and output digests) with its digest. It holds
when: that entry is an ``approve`` decision with the same decision id, reviewer credit and
``shown_digest``; the digest is the RFC 8785 digest of ``shown``; and ``shown`` covers this file:
for a held output, the upstream bytes this signed file was made from (``output.signed``'s
``upstream_sha256`` for this ``signed_sha256``) are among ``shown.outputs``; for a held request,
``shown.request`` is the request commitment the held turn recorded in ``turn.received``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from storage.ledger.log import Ledger


def _shown_digest(shown: dict[str, Any]) -> str:
    """``governance.review.shown.shown_digest``, recomputed here as any verifier would (the
    review package sits beside provenance, not below it)."""
    return hashlib.sha256(rfc8785.dumps(shown)).hexdigest()


def approval_checks(
    ledger: Ledger, custody: dict[str, Any] | None, record: dict[str, Any] | None, sha256: str
) -> list[dict[str, Any]]:
    """One check per approval in ``custody`` (the manifest's Custody assertion) for the file
    with this ``sha256``, against the ledger (``record``: the releasing turn's, or None)."""
    approvals = (custody or {}).get("approvals") or []
    events = (record or {}).get("events") or []
    upstream = {
        e["body"].get("upstream_sha256")
        for e in events
        if e["type"] == "output.signed" and e["body"].get("signed_sha256") == sha256
    }
    out = []
    for approval in approvals:
        if not isinstance(approval, dict):
            continue
        shown = approval.get("shown") or {}
        check: dict[str, Any] = {
            "reviewer": approval.get("reviewer"),
            "identity": approval.get("identity"),
            "group": approval.get("group"),
            "task": approval.get("task"),
            "stage": approval.get("stage"),
            "time_ms": approval.get("time_ms"),
            "decision_id": approval.get("decision_id"),
            "shown_digest": approval.get("shown_digest"),
        }
        decided = _entry(ledger, approval.get("ledger_index"))
        body = decided.event.body if decided is not None else {}
        check["in_ledger"] = (
            decided is not None
            and decided.event.type == "review.decided"
            and body.get("decision") == "approve"
            and body.get("decision_id") == approval.get("decision_id")
            and body.get("credit") == approval.get("reviewer")
            and body.get("shown_digest") == approval.get("shown_digest")
        )
        digest_ok = isinstance(shown, dict) and _shown_digest(shown) == approval.get("shown_digest")
        if approval.get("stage") == "response":
            covers = bool(upstream) and upstream <= set(shown.get("outputs") or [])
        else:
            covers = _held_request(ledger, approval.get("turn")) == shown.get("request")
        check["covers_these_bytes"] = bool(check["in_ledger"] and digest_ok and covers)
        out.append(check)
    return out


def _entry(ledger: Ledger, index: Any) -> Any:
    if not isinstance(index, int) or not 0 <= index < ledger.size():
        return None
    return ledger.entry(index)


def _held_request(ledger: Ledger, turn: Any) -> str | None:
    if not isinstance(turn, str):
        return None
    for entry in ledger.entries_for_turn(turn):
        if entry.event.type == "turn.received":
            request = entry.event.body.get("request")
            return request if isinstance(request, str) else None
    return None
