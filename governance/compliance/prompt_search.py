"""Text search in the committed prompts of a tenant's turns, and the ledger event recording it.

Prompts are not in the database's clear text: each turn's ``turn.received`` leaf holds a salted
commitment to its prompt, and the prompt sits in the blob store (erasable). A search therefore
opens the prompts of the turns its filters select, newest first, and matches them
case-insensitively; it reads at most ``scan`` turns per call and returns a cursor to continue
where it stopped, so one call's cost is bounded whatever the tenant's size. Erased prompts are
skipped (they can no longer be read, which is the point of erasing them).

Every search is recorded before its results are returned (``prompts.searched``: who searched,
a salted commitment to the query text, the filters, how many turns were read and matched); the
query text itself goes to the blob store like any other content, so it can be erased too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from governance.compliance.queries import (
    DEFAULT_LIMIT,
    Page,
    QueryError,
    TurnFilter,
    _attach_ledger_facts,
    _limit,
    _turn_json,
    format_cursor,
    parse_cursor,
    turns_page_query,
)
from governance.ledger_vocabulary import PromptsSearched, ledger_event
from storage.blobs import BlobStore, Commitment, Commitments
from storage.ledger.events import LedgerEvent, SideRows
from storage.ledger.leaf import commit_digest, decode_leaf, new_salt
from storage.schema.ledger import LEDGER_ENTRIES

MAX_QUERY_CHARS = 1000
DEFAULT_SCAN = 5000
BATCH = 200


@dataclass(frozen=True)
class PromptMatches:
    page: Page
    scanned: int


def _prompts(engine: Engine, commitments: Commitments, first_indexes: list[int]) -> dict[int, str]:
    """The prompt text of each turn.received entry (by index) whose prompt can still be opened."""
    if not first_indexes:
        return {}
    e = LEDGER_ENTRIES.c
    with engine.connect() as conn:
        leaves = conn.execute(
            select(e.idx, e.leaf).where(e.idx.in_(first_indexes), e.type == "turn.received")
        ).all()
    out: dict[int, str] = {}
    for idx, leaf in leaves:
        committed = decode_leaf(bytes(leaf))["body"].get("prompt")
        if isinstance(committed, str):
            data = commitments.open(committed)
            if data is not None:
                out[int(idx)] = data.decode("utf-8", "replace")
    return out


def search_prompts(
    engine: Engine,
    commitments: Commitments,
    flt: TurnFilter,
    text: str,
    *,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
    scan: int = DEFAULT_SCAN,
) -> PromptMatches:
    """Turns matching ``flt`` whose prompt contains ``text`` (case-insensitive), newest first."""
    if not text.strip():
        raise QueryError("query must be a non-empty text to look for in the prompts")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query must be at most {MAX_QUERY_CHARS} characters; got {len(text)}")
    limit = _limit(limit)
    needle = text.casefold()
    after = parse_cursor("prompts", flt, cursor) if cursor else None
    rows: list[dict[str, Any]] = []
    scanned = 0
    exhausted = False
    while len(rows) < limit and scanned < scan:
        want = min(BATCH, scan - scanned)
        with engine.connect() as conn:
            batch = [
                _turn_json(r) for r in conn.execute(turns_page_query(flt, after=after, limit=want))
            ]
        indexes = [t["first_entry_index"] for t in batch if t["first_entry_index"] is not None]
        prompts = _prompts(engine, commitments, indexes)
        read = 0
        for turn in batch:
            read += 1
            after = [turn["created_ms"], turn["turn_id"]]
            prompt = prompts.get(turn["first_entry_index"])
            if prompt is not None and needle in prompt.casefold():
                rows.append({**turn, "prompt": prompt})
                if len(rows) == limit:
                    break
        scanned += read
        if read == len(batch) and len(batch) < want:
            exhausted = True
            break
    _attach_ledger_facts(engine, rows)
    nxt = None if exhausted or after is None else format_cursor("prompts", flt, after)
    return PromptMatches(Page(rows, nxt), scanned)


def commit_query(blobs: BlobStore, text: str) -> Commitment:
    """Store the query text in the blob store and commit to it (the salt commits with the event)."""
    data = text.encode("utf-8")
    raw = hashlib.sha256(data).digest()
    digest = raw.hex()
    blobs.put(data, digest)
    salt = new_salt()
    return Commitment(commit_digest(raw, salt), digest, salt)


def searched_event(
    *,
    tenant: str,
    actor: str,
    query: Commitment,
    query_chars: int,
    flt: TurnFilter,
    found: PromptMatches,
) -> LedgerEvent:
    body: PromptsSearched = {
        "query": query.commitment,
        "query_chars": query_chars,
        "filters": {k: v for k, v in flt.used().items() if k != "tenant"},
        "results": len(found.page.rows),
        "scanned": found.scanned,
        "more": found.page.next_cursor is not None,
    }
    return ledger_event("prompts.searched", body, tenant=tenant, actor=actor)


def searched_side_rows(commitments: Commitments, query: Commitment) -> SideRows:
    return commitments.side_rows([query])
