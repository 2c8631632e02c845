"""``custody policy diff --replay``: re-decide recorded turns under two policies, list what changes.

The full input of every decision is kept in the blob store; the ``decision_inputs`` table indexes
the commitment to it by turn and stage (the ledger event holds the same commitment), so erasing the
blob removes the input from replay too. Replay takes the last N request-stage inputs,
re-classifies each prompt with each policy's own term lists (they are part of the policy), keeps
the recorded counters (the rate-limit state of the day), and decides it under the old and the new
policy directory.
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
    settings: Settings, n: int, stage: str = "request", notes: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The last ``n`` recorded decision inputs of ``stage``, oldest first, as (turn id, input).

    Each input is opened from the blob store through its commitment; a turn whose input was
    erased (or is gone) is skipped, with a line saying so appended to ``notes``.
    """
    from sqlalchemy import text

    from governance.state import open_engine
    from storage.blobs import Commitments, open_blob_store

    engine = open_engine(settings, create=False)  # a StateError when there is no installation
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT turn_id, input_commitment FROM decision_inputs WHERE stage = :stage"
                    " ORDER BY created_ms DESC, id DESC LIMIT :n"
                ),
                {"stage": stage, "n": int(n)},
            ).all()
        blobs = open_blob_store(settings.blob_store, data_dir=settings.data_dir, engine=engine)
        commitments = Commitments(engine, blobs)
        out: list[tuple[str, dict[str, Any]]] = []
        for turn_id, commitment in reversed(rows):
            data = commitments.open(str(commitment))
            if data is None:
                if notes is not None:
                    state = commitments.check(str(commitment))
                    why = "was erased" if state == "erased" else f"is {state}"
                    notes.append(f"turn {turn_id}: skipped, its recorded {stage} input {why}")
                continue
            document = json.loads(data)
            if isinstance(document, dict):
                out.append((str(turn_id), document))
        return out
    finally:
        engine.dispose()


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
