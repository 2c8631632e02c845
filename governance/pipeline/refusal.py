"""A refusal before any turn begins is one ledger event: ``request.refused``.

Contract: every request to a model route that an authenticated caller sent and that Custody
refuses before a turn runs (a body over ``CUSTODY_MAX_REQUEST_BYTES``, a route or method Custody
does not serve, a bad model name, a malformed ``x-custody-*`` header, a ``countTokens`` call the
policy denies) is recorded as one ``request.refused`` event before the refusal is sent, and the
refusal names that event's id in ``x-custody-turn``. Why one event and not ``turn.received`` +
``turn.failed``: nothing was received that a turn could describe (the body may be unread, the
headers unusable), and a turn row would make a compliance query count refusals as edits.

Every field of the body is bounded (the leaf stays far below 64 KiB whatever the caller sent);
a body Custody did read is kept as a salted commitment, never in the leaf. Unauthenticated
requests have no tenant and are not recorded here (their count is in the metrics).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from governance.auth.principal import Principal
from governance.ledger_vocabulary import RequestRefused, ledger_event
from governance.pipeline.errors import TurnError
from storage.blobs import Commitments
from storage.ledger import Ledger
from storage.ledger.events import LedgerEvent

OffLoop = Callable[..., Awaitable[Any]]

log = logging.getLogger("custody")

MAX_PATH_CHARS = 256
MAX_MESSAGE_CHARS = 1024


def new_record_id() -> str:
    """The id of a turn or of any other recorded call (the ledger's ``turn`` field)."""
    return uuid.uuid4().hex


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying so when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def record_refusal(
    principal: Principal,
    err: TurnError,
    *,
    ledger: Ledger,
    commitments: Commitments,
    off_loop: OffLoop,
    http_method: str,
    path: str,
    session: str | None = None,
    body: bytes | None = None,
    facts: dict[str, Any] | None = None,
    record_id: str | None = None,
    preceding: Sequence[LedgerEvent] = (),
) -> TurnError:
    """Append ``request.refused`` for ``err`` (after ``preceding``, in the same append: e.g.
    the ``policy.decided`` that refused it) and return ``err`` naming the record."""
    record_id = record_id or err.turn_id or new_record_id()
    event_body: RequestRefused = {
        "http_method": http_method[:16],
        "path": clip(path, MAX_PATH_CHARS),
        "path_chars": len(path),
        "code": err.code,
        "status": err.status,
        "reason": err.reason,
        "message": clip(err.message, MAX_MESSAGE_CHARS),
        **(facts or {}),  # type: ignore[typeddict-item]
    }
    if body:
        commitment = await off_loop(commitments.put_committed, body)
        event_body["request"] = commitment.commitment  # the blob is durable before the leaf
        event_body["request_bytes"] = len(body)
    event = ledger_event(
        "request.refused",
        event_body,
        tenant=principal.tenant,
        actor=principal.actor,
        session=session,
        turn=record_id,
    )
    await off_loop(ledger.append, [*preceding, event])
    log.info(
        "refused %s %s: %s %s (record %s, tenant %s, actor %s)",
        http_method,
        clip(path, MAX_PATH_CHARS),
        err.code,
        err.reason or err.status,
        record_id,
        principal.tenant,
        principal.actor,
    )
    return err.for_turn(record_id)
