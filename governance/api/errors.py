"""Gemini's error envelope: ``{"error": {"code", "message", "status", "details"}}``.

A ``GeminiError`` raised for a turn (or for any recorded call) carries that record's id: the
response names it in the ``x-custody-turn`` header and in the envelope's ``details`` as an
``ErrorInfo`` with ``metadata.turn_id``, so an SDK user holding only the exception
(``google.genai.errors.APIError.response.headers`` or ``.details``) can find the record.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

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
TURN_HEADER = "x-custody-turn"

# What Custody serves, for every "not served" answer (keep in step with the routers in app.py).
SERVED = (
    "Custody serves POST /{v1,v1beta}/models/{model}:generateContent, :streamGenerateContent and"
    " :countTokens; GET /{v1,v1beta}/models (pageSize, pageToken) and /{v1,v1beta}/models/{model};"
    " and its native API under /api/v1/. Not served: the Files API, embedContent,"
    " batchGenerateContent and the Vertex AI paths."
)


class GeminiError(Exception):
    """An error to return to a Gemini-API caller in Gemini's own envelope."""

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

    def for_turn(self, turn_id: str) -> GeminiError:
        """Name the record this error ends (idempotent: the first id set wins)."""
        if self.turn_id is None:
            self.turn_id = turn_id
        return self

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "status": self.status,
                "details": self._details(),
            }
        }

    def _details(self) -> list[dict[str, Any]]:
        metadata = dict(self.metadata)
        if self.turn_id:
            metadata["turn_id"] = self.turn_id
        if not metadata:
            return self.details
        details = list(self.details)
        for i, item in enumerate(details):
            if item.get("@type") == ERROR_INFO and item.get("domain") == "custody":
                merged = {**(item.get("metadata") or {}), **metadata}
                details[i] = {**item, "metadata": merged}
                return details
        # An upstream's error (its own details kept as they came) gains Custody's ErrorInfo.
        details.append(
            {
                "@type": ERROR_INFO,
                "reason": self.reason or self.status,
                "domain": "custody",
                "metadata": metadata,
            }
        )
        return details

    def response(self) -> Response:
        headers = dict(self.headers)
        if self.turn_id:
            headers[TURN_HEADER] = self.turn_id
        return Response(
            orjson.dumps(self.envelope()),
            status_code=self.code,
            media_type="application/json",
            headers=headers,
        )


def not_served(path: str, code: int = 404, method: str = "") -> GeminiError:
    """The answer to a route Custody does not serve: what was asked, and what is served."""
    shown = path if len(path) <= 200 else path[:199] + "…"
    asked = f"{method} {shown}".strip()
    if code == 405:
        return GeminiError(
            405,
            f"{asked} is not a method Custody serves on this path. {SERVED}",
            status="UNIMPLEMENTED",
            reason="METHOD_NOT_SERVED",
        )
    return GeminiError(
        404, f"{asked} is not served by Custody. {SERVED}", status="NOT_FOUND", reason="NOT_SERVED"
    )
