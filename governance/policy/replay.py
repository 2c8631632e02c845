"""``custody policy diff --replay``: re-decide recorded turns under two policies, list what changes.

The full input of every decision is kept in the ``decision_inputs`` table (the ledger event holds
only a commitment to it). Replay takes the last N request-stage inputs, re-classifies each prompt
with each policy's own term lists (they are part of the policy), keeps the recorded counters
(the rate-limit state of the day), and decides it under the old and the new policy directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.policy.decision import Decision
from governance.policy.service import PolicyService

if TYPE_CHECKING:
    from governance.settings import Settings


@dataclass(frozen=True)
class DecisionChange:
    """One recorded turn whose outcome differs between the two policies."""

    turn_id: str
    old_outcome: str
    new_outcome: str
    old_reasons: tuple[str, ...]
    new_reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "turn_id": self.turn_id,
            "old": {"outcome": self.old_outcome, "reasons": list(self.old_reasons)},
            "new": {"outcome": self.new_outcome, "reasons": list(self.new_reasons)},
        }


def load_recorded_inputs(
    settings: Settings, n: int, stage: str = "request"
) -> list[tuple[str, dict[str, Any]]]:
    """The last ``n`` recorded decision inputs of ``stage``, oldest first, as (turn id, input)."""
    from sqlalchemy import text

    from governance.state import open_engine

    engine = open_engine(settings, create=False)  # a StateError when there is no installation
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT turn_id, input_json FROM decision_inputs WHERE stage = :stage"
                    " ORDER BY created_ms DESC, id DESC LIMIT :n"
                ),
                {"stage": stage, "n": int(n)},
            ).all()
    finally:
        engine.dispose()
    out: list[tuple[str, dict[str, Any]]] = []
    for turn_id, raw in reversed(rows):
        document = json.loads(raw)
        if isinstance(document, dict):
            out.append((str(turn_id), document))
    return out


def decide_recorded(service: PolicyService, document: dict[str, Any]) -> Decision:
    """Re-decide one recorded input under ``service``'s policy (no rate-limit reservation)."""
    return service.evaluate_document(document, fresh_signals=True)


def diff_decisions(
    old_dir: Path, new_dir: Path, inputs: list[tuple[str, dict[str, Any]]]
) -> tuple[list[DecisionChange], int]:
    """The turns whose outcome changes from ``old_dir``'s policy to ``new_dir``'s, and the count."""
    old = PolicyService(old_dir)
    new = PolicyService(new_dir)
    try:
        changes = []
        for turn_id, document in inputs:
            before = decide_recorded(old, document)
            after = decide_recorded(new, document)
            if before.outcome != after.outcome:
                changes.append(
                    DecisionChange(
                        turn_id, before.outcome, after.outcome, before.reasons, after.reasons
                    )
                )
        return changes, len(inputs)
    finally:
        old.close()
        new.close()
