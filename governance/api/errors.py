"""Gemini's error envelope: ``{"error": {"code", "message", "status", "details"}}``.

The pipeline raises ``governance.pipeline.errors.TurnError`` (it knows no HTTP); the API layer
raises its own as ``GeminiError`` (the same error, with ``response()``), and the app's one
exception handler renders both with ``error_response``.

An error raised for a turn (or for any recorded call) carries that record's id: the
response names it in the ``x-custody-turn`` header and in the envelope's ``details`` as an
``ErrorInfo`` with ``metadata.turn_id``, so an SDK user holding only the exception
(``google.genai.errors.APIError.response.headers`` or ``.details``) can find the record.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from governance.pipeline.errors import ERROR_INFO, TurnError

TURN_HEADER = "x-custody-turn"

# What Custody serves, for every "not served" answer (keep in step with the routers in app.py).
SERVED = (
    "Custody serves POST /{v1,v1beta}/models/{model}:generateContent, :streamGenerateContent and"
    " :countTokens; GET /{v1,v1beta}/models (pageSize, pageToken) and /{v1,v1beta}/models/{model};"
    " and its native API under /api/v1/. Not served: the Files API, embedContent,"
    " batchGenerateContent and the Vertex AI paths."
)


class GeminiError(TurnError):
    """A ``TurnError`` raised by the API layer itself (auth, routing, the native API)."""

    def envelope(self) -> dict[str, Any]:
        return envelope(self)

    def response(self) -> Response:
        return error_response(self)


def envelope(err: TurnError) -> dict[str, Any]:
    """Gemini's envelope for ``err``; its record id joins Custody's ErrorInfo metadata."""
    return {
        "error": {
            "code": err.code,
            "message": err.message,
            "status": err.status,
            "details": _details(err),
        }
    }


def _details(err: TurnError) -> list[dict[str, Any]]:
    metadata = dict(err.metadata)
    if err.turn_id:
        metadata["turn_id"] = err.turn_id
    if not metadata:
        return err.details
    details = list(err.details)
    for i, item in enumerate(details):
        if item.get("@type") == ERROR_INFO and item.get("domain") == "custody":
            merged = {**(item.get("metadata") or {}), **metadata}
            details[i] = {**item, "metadata": merged}
            return details
    # An upstream's error (its own details kept as they came) gains Custody's ErrorInfo.
    details.append(
        {
            "@type": ERROR_INFO,
            "reason": err.reason or err.status,
            "domain": "custody",
            "metadata": metadata,
        }
    )
    return details


def error_response(err: TurnError) -> Response:
    """The HTTP response for ``err``: its code, envelope and headers, and ``x-custody-turn``."""
    headers = dict(err.headers)
    if err.turn_id:
        headers[TURN_HEADER] = err.turn_id
    return Response(
        orjson.dumps(envelope(err)),
        status_code=err.code,
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
