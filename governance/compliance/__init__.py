"""Compliance: queries over turns and events, a compliance record per output, oversight figures.

Read-only over what the pipeline recorded (the turn index and the ledger), except prompt search,
which records itself (``prompts.searched``): reading private content leaves a trace.
"""

from governance.compliance.queries import (
    EventFilter,
    Page,
    QueryError,
    TurnFilter,
    images_by_hash,
    query_events,
    query_turns,
)

__all__ = [
    "EventFilter",
    "Page",
    "QueryError",
    "TurnFilter",
    "images_by_hash",
    "query_events",
    "query_turns",
]
