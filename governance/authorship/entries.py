"""The ledger entries of one session, oldest first, as decoded leaves with their index."""

from __future__ import annotations

from typing import Any

from governance.evidence.export import Selection, select_batches
from storage.ledger.log import Ledger


def session_leaves(ledger: Ledger, tenant: str, session_id: str) -> list[dict[str, Any]]:
    """Every entry of ``tenant`` whose event names ``session_id`` (turn events, the session's
    own events and the review events of its turns), each as its event with ``index`` and
    ``time_ms``: the same selection an evidence bundle of the session makes."""
    out: list[dict[str, Any]] = []
    selection = Selection(tenant=tenant, session=session_id)
    for batch in select_batches(ledger, selection, ledger.size()):
        for entry in batch:
            event = entry.event
            out.append(
                {
                    "index": entry.index,
                    "time_ms": entry.time_ms,
                    "type": event.type,
                    "actor": event.actor,
                    "session": event.session,
                    "turn": event.turn,
                    "body": event.body,
                }
            )
    return out
