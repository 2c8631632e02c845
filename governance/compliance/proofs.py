"""A turn's ledger entries, each with its RFC 6962 inclusion proof against the latest checkpoint.

What an auditor takes away to prove a query's row: the entries' leaves (base64 of the RFC 8785
bytes, which hash to the leaf hashes), the audit paths, and the signed checkpoint note they lead
to. Each proof is checked here before it is returned (``proven``), and any RFC 6962 verifier
can check it again (``tests/test_compliance_queries.py`` does, with the checkpoint's key).
"""

from __future__ import annotations

import base64
from typing import Any

from governance.provenance.lookup import checkpoint_covering
from storage.ledger.log import Ledger
from storage.ledger.merkle import ProofError, check_inclusion


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def turn_proofs(
    ledger: Ledger, turn_id: str, *, tenant: str | None, may_sign: bool
) -> dict[str, Any] | None:
    """The proofs of every entry of ``turn_id``; None when it is unknown or not ``tenant``'s
    (None: any tenant). ``NotYetCheckpointed`` when an entry is newer than the latest
    checkpoint and the caller may not sign one."""
    entries = ledger.entries_for_turn(turn_id)
    if not entries or (tenant is not None and entries[0].event.tenant != tenant):
        return None
    cp = checkpoint_covering(ledger, max(e.index for e in entries), may_sign=may_sign)
    out = []
    for e in entries:
        path = ledger.prove_inclusion(e.index, cp.size)
        try:
            check_inclusion(path, cp.size, cp.root, e.index, e.leaf_hash)
            proven = True
        except ProofError:
            proven = False
        out.append(
            {
                "index": e.index,
                "type": e.event.type,
                "leaf": _b64(e.leaf),
                "leaf_hash": _b64(e.leaf_hash),
                "hashes": [_b64(h) for h in path],
                "proven": proven,
            }
        )
    return {
        "turn_id": turn_id,
        "tenant": entries[0].event.tenant,
        "checkpoint": {
            "origin": cp.origin,
            "size": cp.size,
            "root": _b64(cp.root),
            "note": cp.note,
        },
        "entries": out,
    }
