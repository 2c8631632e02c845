"""Gemini's error envelope: ``{"error": {"code", "message", "status", "details"}}``."""

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
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_FOR_CODE.get(code, "UNKNOWN")
        self.reason = reason
        self.details = details if details is not None else []
        if reason and details is None:
            self.details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "custody",
                }
            ]

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "status": self.status,
                "details": self.details,
            }
        }

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.envelope()), status_code=self.code, media_type="application/json"
        )
