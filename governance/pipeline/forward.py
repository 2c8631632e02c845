"""Stage 3, forward: the raw request goes upstream, and what came back is read or refused.

Error mapping, in one place: the upstream's own errors keep their code (a non-200, or a 200 with
an ``error`` object); what the upstream got wrong — no answer, a timeout, a body that is not
JSON, a stream cut before its last chunk, a response Custody cannot release — is a 5xx naming the
upstream, never a 4xx blaming the caller. ``read_answer`` (``orjson`` of the whole body and the
walk over every part) is byte-heavy: the orchestrator runs it off the event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from governance.ledger_vocabulary import UpstreamAttempt, UpstreamRequested, UpstreamReturned
from governance.pipeline.errors import ERROR_INFO, TurnError
from governance.pipeline.response import ResponseSummary, summarise
from governance.pipeline.turn_types import TurnRequest
from governance.upstream.breaker import CircuitBreaker
from governance.upstream.client import UpstreamClient, UpstreamResult, parse_json_object
from governance.upstream.retry import RETRY_INFO, NextStep, RetryPolicy, next_step

RecordAttempt = Callable[[UpstreamAttempt], Awaitable[None]]
MAX_ATTEMPT_ERROR_CHARS = 512


@dataclass
class UpstreamAnswer:
    """The upstream's answer as read: its documents and summary, or why it cannot be released."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    summary: ResponseSummary = field(default_factory=ResponseSummary)
    error: TurnError | None = None


@dataclass(frozen=True)
class UpstreamGuard:
    """How the upstream phase of a turn is bounded: the retry policy of a tenant (its
    ``upstream_retries``), the turn's total deadline and the upstream's circuit breaker."""

    retries_for: Callable[[str], int]
    base_delay_s: float
    max_delay_s: float
    deadline_s: float
    breaker: CircuitBreaker

    @classmethod
    def none(cls) -> UpstreamGuard:
        """No retries, no breaker, no deadline beyond the client's timeout (tests, tools)."""
        return cls(lambda _: 0, 0.5, 10.0, math.inf, CircuitBreaker(threshold=0, cooldown_s=0))

    def policy(self, tenant: str) -> RetryPolicy:
        return RetryPolicy(self.retries_for(tenant), self.base_delay_s, self.max_delay_s)


@dataclass
class Sent:
    """What the upstream phase ended with: the answer to release or refuse, and how it went."""

    result: UpstreamResult
    attempt: int
    step: NextStep


class Forwarder:
    """Sends turns to one upstream, byte for byte, within the turn's retry policy and deadline."""

    def __init__(self, upstream: UpstreamClient, guard: UpstreamGuard | None = None) -> None:
        self._upstream = upstream
        self.guard = guard or UpstreamGuard.none()

    @property
    def label(self) -> str:
        return self._upstream.label

    def requested_body(self, request: TurnRequest) -> UpstreamRequested:
        """The intent, durable before anything leaves for upstream."""
        return {"upstream": self._upstream.label, "path": request.upstream_path}

    async def send(self, request: TurnRequest, tenant: str, record: RecordAttempt) -> Sent:
        """Post the raw body, again after a retryable failure as the tenant's policy allows,
        until an answer, the last allowed attempt or the deadline. Each attempt that is not the
        answer is recorded (``record``, durable before the next attempt leaves). An open
        circuit breaker refuses at once: ``TurnError`` 503 with ``Retry-After``."""
        guard = self.guard
        policy = guard.policy(tenant)
        deadline = time.monotonic() + guard.deadline_s
        attempt = 0
        while True:
            attempt += 1
            admission = guard.breaker.admit()
            if not admission.allowed:
                await record(_refused_attempt(attempt))
                raise self._circuit_open(admission.retry_after_s)
            try:
                result = await self._post(request, deadline - time.monotonic())
            except BaseException:
                guard.breaker.abandon()
                raise
            guard.breaker.record(result.status)
            step = next_step(result, attempt, policy, remaining_s=deadline - time.monotonic())
            if step.retry and not guard.breaker.would_admit():
                step = NextStep(False, outcome=step.outcome, gave_up="circuit breaker open")
            if not step.retry:
                return Sent(result, attempt, step)
            await record(attempt_body(result, attempt, step))
            await asyncio.sleep(step.delay_s)

    async def _post(self, request: TurnRequest, remaining_s: float) -> UpstreamResult:
        """One attempt; a stream always goes upstream as SSE (the route answers a JSON array
        when the caller did not ask for ``alt=sse``)."""
        params = {k: v for k, v in request.params.items() if k != "key"}
        deadline_s = remaining_s if math.isfinite(remaining_s) else None
        if request.stream:
            params["alt"] = "sse"
            return await self._upstream.post_stream(
                request.upstream_path, request.body, request.headers, params, deadline_s=deadline_s
            )
        return await self._upstream.post(
            request.upstream_path, request.body, request.headers, params, deadline_s=deadline_s
        )

    def _circuit_open(self, retry_after_s: float) -> TurnError:
        seconds = max(1, math.ceil(retry_after_s))
        breaker = self.guard.breaker
        return TurnError(
            503,
            f"Custody is not calling the upstream ({self.label}) for now: it failed"
            f" {breaker.threshold} times in a row, so its circuit breaker is open. Nothing was"
            f" sent or released; retry in {seconds} s (Retry-After). If this persists, the"
            " upstream is down: ask your Custody administrator to check it.",
            status="UNAVAILABLE",
            reason="UPSTREAM_CIRCUIT_OPEN",
            details=[
                {"@type": ERROR_INFO, "reason": "UPSTREAM_CIRCUIT_OPEN", "domain": "custody"},
                {"@type": RETRY_INFO, "retryDelay": f"{seconds}s"},
            ],
            headers={"Retry-After": str(seconds)},
        )


def attempt_body(result: UpstreamResult, attempt: int, step: NextStep) -> UpstreamAttempt:
    """The ``upstream.attempt`` body of an attempt that is retried: what it got, how long it
    took and how long Custody waits before the next one."""
    body: UpstreamAttempt = {
        "attempt": attempt,
        "status": result.status,
        "outcome": step.outcome,
        "elapsed_us": round(result.elapsed_ms * 1000),
        "retry": step.retry,
        "delay_ms": round(step.delay_s * 1000),
    }
    if step.retry_after_s is not None:
        body["retry_after_ms"] = round(step.retry_after_s * 1000)
    message = result.transport_error or _error_message(result.body)
    if message:
        body["error"] = message[:MAX_ATTEMPT_ERROR_CHARS]
    return body


def _refused_attempt(attempt: int) -> UpstreamAttempt:
    return {
        "attempt": attempt,
        "status": 0,
        "outcome": "circuit_open",
        "elapsed_us": 0,
        "retry": False,
        "delay_ms": 0,
    }


def _error_message(body: bytes) -> str | None:
    doc = parse_json_object(body) if body else None
    error = doc.get("error") if doc else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else None


def read_answer(request: TurnRequest, result: UpstreamResult) -> UpstreamAnswer:
    """Parse and walk the upstream's answer (sniffing every image, reading headers); a stream
    counts as complete only when its last chunk says it finished."""
    documents, error = _documents_of(result)
    if error is not None:
        return UpstreamAnswer(error=error)
    summary = summarise(documents)
    if request.stream:
        result.stream_complete = result.stream_complete and summary.final_chunk
    return UpstreamAnswer(documents, summary, _unreleasable(request, result, summary))


def returned_body(
    result: UpstreamResult,
    answer: UpstreamAnswer,
    response_ref: dict[str, Any],
    sent: Sent | None = None,
) -> UpstreamReturned:
    """The ``upstream.returned`` body: status, timing, safety outcome, usage, a commitment to
    the raw answer, and the error when it cannot be released; ``attempt`` when it was not the
    first, ``gave_up`` when a retryable failure was not retried (why)."""
    summary, err = answer.summary, answer.error
    body: UpstreamReturned = {
        "status": result.status,
        "elapsed_us": round(result.elapsed_ms * 1000),
        "model_version": summary.model_version,
        "response_id": summary.response_id,
        "finish_reasons": list(dict.fromkeys(summary.finish_reasons)),  # distinct, in order
        "block_reason": summary.block_reason,
        "safety": summary.safety_outcome if err is None else None,
        "usage": summary.usage,
        "images": len(summary.images),
        "stream_complete": result.stream_complete,
    }
    body.update(response_ref)  # type: ignore[typeddict-item]
    if sent is not None and sent.attempt > 1:
        body["attempt"] = sent.attempt
    if sent is not None and sent.step.gave_up:
        body["gave_up"] = sent.step.gave_up
    if err is not None:
        body["error"] = {"code": err.code, "status": err.status, "message": err.message}
    return body


def _upstream_fault(message: str, reason: str, code: int = 502) -> TurnError:
    return TurnError(code, message, reason=reason)


def _error_of(doc: dict[str, Any], http_status: int) -> TurnError:
    """The Gemini error an upstream sent (as a non-200 status, or as a 200 with an ``error``
    object): its own code when it is an HTTP error code, else 502."""
    found = doc.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    inner = err.get("code")
    code = http_status if 400 <= http_status <= 599 else 502
    if http_status == 200 and isinstance(inner, int) and 400 <= inner <= 599:
        code = inner
    listed = err.get("details")
    details: list[Any] = listed if isinstance(listed, list) else []
    message = err.get("message")
    status = err.get("status")
    return TurnError(
        code,
        str(message) if message else f"The upstream answered HTTP {http_status} with an error.",
        status=str(status)[:64] if status and code in (http_status, inner) else None,
        reason="UPSTREAM_ERROR",
        details=[d for d in details if isinstance(d, dict)],
    )


def _documents_of(result: UpstreamResult) -> tuple[list[dict[str, Any]], TurnError | None]:
    """The upstream's JSON documents, or the error to hand the caller."""
    if result.status == 0:
        if result.timed_out:
            return [], TurnError(
                504,
                f"The upstream did not answer in time ({result.transport_error}); Custody"
                " released nothing. Retry later, or raise CUSTODY_UPSTREAM_TIMEOUT_S or"
                " CUSTODY_UPSTREAM_DEADLINE_S.",
                reason="UPSTREAM_TIMEOUT",
            )
        return [], TurnError(
            502,
            f"Custody got no complete answer from the upstream ({result.transport_error});"
            " nothing was released. Retry the request.",
            status="UNAVAILABLE",
            reason="UPSTREAM_ERROR",
        )
    if result.status != 200:
        return [], _error_of(parse_json_object(result.body) or {}, result.status)
    if result.events or not result.body:
        docs = [parse_json_object(e) for e in result.events]
        if docs and docs[-1] is None and not result.stream_complete:
            docs.pop()  # the event the cut interrupted: the stream is incomplete, not malformed
        if not docs:
            return [], _upstream_fault(
                "The upstream stream ended before its first chunk; nothing was released.",
                "UPSTREAM_STREAM_INCOMPLETE",
            )
        if any(d is None for d in docs):
            return [], _upstream_fault(
                "The upstream stream carried a chunk that is not a JSON object; nothing was"
                " released.",
                "UPSTREAM_MALFORMED",
            )
        chunks = [d for d in docs if d is not None]
        for chunk in chunks:
            if "error" in chunk:
                return [], _error_of(chunk, 200)
        return chunks, None
    doc = parse_json_object(result.body)
    if doc is None:
        return [], _upstream_fault(
            "The upstream answered HTTP 200 with a body that is not a JSON object; nothing was"
            " released.",
            "UPSTREAM_MALFORMED",
        )
    if "error" in doc:
        return [], _error_of(doc, 200)
    return [doc], None


def _unreleasable(
    request: TurnRequest, result: UpstreamResult, summary: ResponseSummary
) -> TurnError | None:
    """Why a well-formed upstream answer still cannot be released (or None)."""
    if summary.fault is not None:
        return _upstream_fault(summary.fault.message, summary.fault.reason)
    if request.stream and not result.stream_complete:
        if result.timed_out:
            return TurnError(
                504,
                "The upstream stream stopped sending before its last chunk (timed out); nothing"
                " was released. Retry later, or raise CUSTODY_UPSTREAM_TIMEOUT_S.",
                reason="UPSTREAM_TIMEOUT",
            )
        cut = f" ({result.transport_error})" if result.transport_error else ""
        return _upstream_fault(
            "The upstream stream ended without its final chunk (no finishReason)"
            f"{cut}; nothing was released. Retry the request.",
            "UPSTREAM_STREAM_INCOMPLETE",
        )
    return None
