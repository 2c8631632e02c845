"""Gemini's error envelope and the faults a test can inject per request.

Fault directive syntax (either works; the header wins when both are given):

- in the last user turn's text: ``[emulator:fault=KIND]`` (removed from the prompt before editing)
- as a request header: ``x-emulator-fault: KIND``

KIND is one of:

=========  =====================================================================================
``429``    RESOURCE_EXHAUSTED with ``google.rpc.QuotaFailure`` and ``google.rpc.RetryInfo``
           (``retryDelay: "2s"``) details; ``429:S`` sets the retryDelay to S seconds
           (``429:0`` sends no RetryInfo, as a daily quota does)
``500``    INTERNAL
``503``    UNAVAILABLE ("The model is overloaded")
``400``    INVALID_ARGUMENT
``slow:MS`` the normal answer, after sleeping MS milliseconds (at most 120 000)
``cut``    stream: the first chunk, then the connection closes with no final chunk;
           non-stream: headers and half the body, then the connection closes
``error200`` HTTP 200 whose body is a 429 RESOURCE_EXHAUSTED error envelope (as some proxies
           answer): a gateway must treat it as the error it is, not as a success
``malformed`` HTTP 200 whose body (or stream event) is not JSON
``badimage`` HTTP 200, a well-formed answer whose image part is not an image (random bytes
           declared as image/png)
=========  =====================================================================================

An unknown KIND is itself a 400, so a typo in a test never silently passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
from starlette.responses import Response

FAULT_DIRECTIVE = re.compile(r"\[emulator:fault=([^\]\s]+)\]", re.IGNORECASE)
MAX_SLOW_MS = 120_000
_SECONDS = re.compile(r"^\d{1,3}(?:\.\d{1,3})?$")
INJECTED = " (custody emulator: injected fault)"

STATUS_BY_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class GeminiError(Exception):
    """An error to answer in Gemini's envelope: ``{"error": {code, message, status, details}}``."""

    def __init__(self, code: int, message: str, details: list[dict[str, object]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "status": STATUS_BY_CODE.get(self.code, "UNKNOWN"),
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.body()),
            status_code=self.code,
            media_type="application/json; charset=UTF-8",
            headers={"x-custody-emulator": "1"},
        )


def invalid_argument(message: str) -> GeminiError:
    """A 400 INVALID_ARGUMENT with a plain message, as Gemini words most of its 400s."""
    return GeminiError(400, message)


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` in {"429", "500", "503", "400", "slow", "cut", "error200"}."""

    kind: str
    slow_ms: int = 0
    retry_delay_s: float = 2.0  # the 429's RetryInfo (0: none)

    @property
    def label(self) -> str:
        if self.kind == "429" and self.retry_delay_s != 2.0:
            return f"429:{self.retry_delay_s:g}"
        return f"slow:{self.slow_ms}" if self.kind == "slow" else self.kind


def parse_fault(spec: str) -> Fault:
    """``"429"`` / ``"slow:250"`` / ``"cut"`` … → a Fault; anything else → GeminiError 400."""
    kind = spec.strip().lower()
    if kind in ("429", "500", "503", "400", "cut", "error200", "malformed", "badimage"):
        return Fault(kind)
    if kind.startswith("slow:") and kind[5:].isdigit():
        return Fault("slow", min(int(kind[5:]), MAX_SLOW_MS))
    if kind.startswith("429:") and _SECONDS.match(kind[4:]):
        return Fault("429", retry_delay_s=min(float(kind[4:]), MAX_SLOW_MS / 1000))
    raise invalid_argument(
        f"Unknown emulator fault {spec!r}: use 429, 429:S, 500, 503, 400, slow:MS, cut, error200,"
        " malformed or badimage." + INJECTED
    )


def find_fault(header: str | None, prompt: str) -> tuple[Fault | None, str]:
    """The fault asked for (header first, then the prompt directive) and the prompt without it."""
    match = FAULT_DIRECTIVE.search(prompt)
    cleaned = FAULT_DIRECTIVE.sub("", prompt).strip() if match else prompt
    if header:
        return parse_fault(header), cleaned
    if match:
        return parse_fault(match.group(1)), cleaned
    return None, cleaned


def _retry_info(fault: Fault) -> list[dict[str, object]]:
    if not fault.retry_delay_s:
        return []
    return [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
             "retryDelay": f"{fault.retry_delay_s:g}s"}]


def fault_error(fault: Fault, model: str) -> GeminiError | None:
    """The Gemini error an error-kind fault answers with; None for ``slow``, ``cut``,
    ``malformed`` and ``badimage`` (answers that go wrong in their body, see ``app``)."""
    if fault.kind == "429":
        return GeminiError(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
            + INJECTED,
            [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": model},
                            "quotaValue": "10",
                        }
                    ],
                },
                *_retry_info(fault),
            ],
        )  # fmt: skip
    if fault.kind == "500":
        return GeminiError(
            500,
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting" + INJECTED,
        )
    if fault.kind == "503":
        return GeminiError(503, "The model is overloaded. Please try again later." + INJECTED)
    if fault.kind == "400":
        return GeminiError(400, "Request contains an invalid argument." + INJECTED)
    if fault.kind == "error200":
        return ErrorIn200(429, "Resource has been exhausted (e.g. check quota)." + INJECTED)
    return None


class ErrorIn200(GeminiError):
    """An error envelope sent with HTTP 200, the way a misbehaving proxy or upstream answers."""

    def response(self) -> Response:
        response = super().response()
        response.status_code = 200
        return response
