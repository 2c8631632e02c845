"""The turn's domain error: what went wrong, as the caller must see it, below any HTTP layer.

A ``TurnError`` carries an HTTP ``code``, a google.rpc ``status``, a machine ``reason``, a
``message`` for people, google.rpc ``details`` (an upstream's own are kept as they came), extra
response ``headers``, ErrorInfo ``metadata`` and the id of the record it ends (``turn_id``). The
pipeline and its stages raise it; ``governance.api.errors`` renders it as Gemini's envelope
(``{"error": {"code", "message", "status", "details"}}``) — the pipeline never imports the API.
"""

from __future__ import annotations

from typing import Any

# google.rpc.Code names for the HTTP codes Gemini uses.
STATUS_FOR_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


class TurnError(Exception):
    """An error a caller must see: code, status, reason, message, details, metadata, record id."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        status: str | None = None,
        reason: str = "",
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_FOR_CODE.get(code, "UNKNOWN")
        self.reason = reason
        self.details = details if details is not None else []
        self.headers = dict(headers or {})
        self.turn_id: str | None = None  # set by whoever recorded the call this error ends
        self.metadata: dict[str, str] = {}  # extra ErrorInfo metadata (strings, as google.rpc)
        if reason and details is None:
            self.details = [{"@type": ERROR_INFO, "reason": reason, "domain": "custody"}]

    def for_turn(self, turn_id: str) -> TurnError:
        """Name the record this error ends (idempotent: the first id set wins)."""
        if self.turn_id is None:
            self.turn_id = turn_id
        return self


def internal_error(turn_id: str) -> TurnError:
    """The caller-facing 500 for a turn that failed inside Custody: nothing was released, the
    turn is recorded as failed, the cause is in the server log under the turn id."""
    return TurnError(
        500,
        f"Custody failed while handling this turn (turn {turn_id}); nothing was released"
        " and the turn is recorded as failed. The cause is in Custody's server log under"
        " this turn id: give it to your Custody administrator if retrying does not help.",
        reason="INTERNAL_ERROR",
    )


def pushback_error(retry_after_ms: int) -> TurnError:
    """The caller-facing 503 for a ledger that took nothing more (``LedgerPushback``): retry
    after the hint, in whole seconds (``Retry-After``)."""
    seconds = max(1, -(-retry_after_ms // 1000))
    return TurnError(
        503,
        "Custody's ledger is at capacity and recorded nothing more of this request, so"
        f" nothing was released: retry in {seconds} s (Retry-After). If this persists, ask"
        " your Custody administrator to add gateway replicas or a faster ledger database.",
        reason="LEDGER_PUSHBACK",
        headers={"Retry-After": str(seconds)},
    )
