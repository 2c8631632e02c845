"""The path of one edit turn: receive → policy → upstream → policy → sign → release.

Every step is a ledger event, and the events describing what the caller receives are durable
before the caller receives it. The intent (``upstream.requested``) is recorded before the upstream
call, so a crash in between shows in the ledger as a turn that never finished.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from governance import __version__
from governance.api.errors import GeminiError
from governance.auth.principal import Principal
from governance.content import TurnContent
from governance.pipeline.parse import InputLimits, ParsedRequest, parse_request
from governance.pipeline.policy_facts import request_facts, response_facts
from governance.pipeline.response import ResponseSummary, replace_images, summarise
from governance.pipeline.signing import sign_outputs
from governance.upstream.client import UpstreamResult, parse_json_object
from storage.ledger.events import LedgerEvent, SideRows

if TYPE_CHECKING:
    from governance.policy.decision import Decision
    from governance.services import Services


@dataclass(frozen=True)
class TurnRequest:
    """One Gemini call as it arrived: route facts, headers, raw body."""

    api_version: str
    model: str
    method: str  # "generateContent" | "streamGenerateContent"
    body: bytes
    headers: dict[str, str]
    params: dict[str, str]

    @property
    def stream(self) -> bool:
        return self.method == "streamGenerateContent"

    @property
    def upstream_path(self) -> str:
        return f"/{self.api_version}/models/{self.model}:{self.method}"


@dataclass
class TurnOutcome:
    """What to send back: a unary JSON body or the SSE events of a stream (both signed)."""

    documents: list[dict[str, Any]]
    stream: bool
    turn_id: str


@dataclass
class _Turn:
    """Mutable state of one turn while it runs."""

    request: TurnRequest
    principal: Principal
    turn_id: str
    started: float
    content: TurnContent
    upstream_ms: float = 0.0
    events: list[LedgerEvent] = field(default_factory=list)
    first_index: int | None = None

    def event(self, type_: str, body: dict[str, Any]) -> LedgerEvent:
        ev = LedgerEvent(
            type=type_,
            tenant=self.principal.tenant,
            actor=self.principal.actor,
            session=self.request.headers.get("x-custody-session"),
            turn=self.turn_id,
            body=body,
        )
        self.events.append(ev)
        return ev


class TurnPipeline:
    """Runs turns against the process's services; one instance per app."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def _append(self, turn: _Turn, side: Sequence[SideRows] = ()) -> None:
        """Make the queued events durable (one group-committed append) before going on."""
        if not turn.events:
            return
        events, turn.events = turn.events, []
        entries = await self.s.run_blocking(self.s.ledger.append, events, side)
        if turn.first_index is None:
            turn.first_index = entries[0].index

    async def run(self, request: TurnRequest, principal: Principal) -> TurnOutcome:
        """Run one turn; raises ``GeminiError`` for anything the caller must see as an error."""
        turn_id = uuid.uuid4().hex
        turn = _Turn(
            request, principal, turn_id, time.perf_counter(), self.s.content.begin(turn_id)
        )
        parsed: ParsedRequest | None = None
        try:
            policy = self.s.policy
            limits = InputLimits.from_tenant(
                policy.tenant_settings(principal.tenant), policy.tenant_settings("default")
            )
            parsed = await self.s.run_blocking(
                parse_request,
                request.body,
                max_pixels=self.s.settings.max_image_pixels,
                limits=limits,
            )
            return await self._run_parsed(turn, parsed)
        except GeminiError as err:
            await self._fail(turn, parsed, err)
            raise
        except Exception as exc:
            err = GeminiError(500, f"Custody failed while handling this turn: {exc!r}")
            await self._fail(turn, parsed, err)
            raise err from exc

    async def _run_parsed(self, turn: _Turn, parsed: ParsedRequest) -> TurnOutcome:
        s = self.s
        request = turn.request
        stored = await turn.content.request(parsed)
        turn.event("turn.received", stored.received_body(request, parsed))

        facts = request_facts(turn.principal, request, parsed)
        decision = await s.run_blocking(s.policy.decide_request, facts)
        input_ref = await turn.content.decision_input("request", decision.input_document)
        turn.event("policy.decided", _decision_body(decision, "request", input_ref))
        if decision.outcome == "deny":
            await self._append(turn)
            raise _denied(decision)
        if decision.outcome == "review":
            turn.event("review.requested", {"stage": "request", "reasons": list(decision.reasons)})
            await self._append(turn)
            raise _held(turn.turn_id, decision, "request")

        turn.event(
            "upstream.requested", {"upstream": s.upstream.label, "path": request.upstream_path}
        )
        await self._append(turn)  # the intent is durable before anything leaves for upstream

        params = {k: v for k, v in request.params.items() if k != "key"}
        if request.stream:  # always SSE upstream; the route answers a JSON array when asked
            params["alt"] = "sse"
        if request.stream:
            result = await s.upstream.post_stream(
                request.upstream_path, request.body, request.headers, params
            )
        else:
            result = await s.upstream.post(
                request.upstream_path, request.body, request.headers, params
            )
        turn.upstream_ms = result.elapsed_ms
        s.metrics.upstream_latency.observe(result.elapsed_ms / 1000)

        documents, upstream_error = _documents_of(result)
        summary = summarise(documents) if upstream_error is None else ResponseSummary()
        response_ref = await turn.content.upstream_response(result)
        turn.event(
            "upstream.returned", _upstream_body(result, summary, response_ref, upstream_error)
        )
        if upstream_error is not None:
            await self._append(turn)
            raise upstream_error

        out_decision = await s.run_blocking(
            s.policy.decide_response, facts, response_facts(summary)
        )
        out_ref = await turn.content.decision_input("response", out_decision.input_document)
        turn.event("policy.decided", _decision_body(out_decision, "response", out_ref))
        if out_decision.outcome == "deny":
            # Nothing is released, so the turn does not count against the caller's budget.
            await s.run_blocking(s.policy.release_reservation, decision.decision_id)
            await self._append(turn)
            raise _denied(out_decision)
        if (
            out_decision.outcome in ("review", "review_output")
            or decision.outcome == "review_output"
        ):
            held = out_decision if out_decision.outcome != "allow" else decision
            turn.event("review.requested", {"stage": "response", "reasons": list(held.reasons)})
            await self._append(turn)
            raise _held(turn.turn_id, held, "response")

        # The leaf index of turn.received anchors every manifest of this turn in the ledger.
        signed = await sign_outputs(
            s,
            turn.turn_id,
            turn.principal,
            request,
            parsed,
            summary,
            decision,
            turn.first_index,
            stored.prompt_commitment,
            stored.mask_commitments(parsed),
        )
        for item in signed:
            ref = await turn.content.signed_output(item.output)
            turn.event("output.signed", {**item.ledger_body(), **ref})
        replace_images(documents, {item.position: item.output.data for item in signed})

        total_ms = (time.perf_counter() - turn.started) * 1000
        released_body = {
            "status": 200,
            "stream": request.stream,
            "stream_complete": result.stream_complete,
            "outputs": len(signed),
            "safety": summary.safety_outcome,
            "gateway_us": round((total_ms - turn.upstream_ms) * 1000),
            "upstream_us": round(turn.upstream_ms * 1000),
            "gateway_version": __version__,
        }
        turn.event("turn.released", released_body)
        # Every blob of the turn is durable; its salts and index rows commit with the release
        # events, in one transaction, before a byte goes back to the caller.
        side = await turn.content.closing_rows(
            turn.principal,
            request,
            parsed,
            summary,
            signed,
            status="released",
            outcome=summary.safety_outcome,
            first_index=turn.first_index,
            timings={"upstream_ms": turn.upstream_ms, "total_ms": total_ms},
            upstream_label=s.upstream.label,
            upstream_status=result.status,
        )
        await self._append(turn, side)
        turn.content.closed()
        outcome = (
            "released" if summary.safety_outcome == "ok" else f"released_{summary.safety_outcome}"
        )
        s.metrics.turns.labels(outcome).inc()
        s.metrics.added_latency.observe(max(total_ms - turn.upstream_ms, 0) / 1000)
        return TurnOutcome(documents, request.stream, turn.turn_id)

    async def _fail(self, turn: _Turn, parsed: ParsedRequest | None, err: GeminiError) -> None:
        """Record why the turn ended without a release; the error still reaches the caller."""
        body: dict[str, Any] = {
            "code": err.code,
            "status": err.status,
            "reason": err.reason,
            "message": err.message,
        }
        try:
            if parsed is None:  # refused before parsing: keep what was sent, as a commitment
                body.update(await turn.content.rejected_body(turn.request.body))
            turn.event("turn.failed", body)
            side = await turn.content.closing_rows(
                turn.principal,
                turn.request,
                parsed,
                None,
                [],
                status="failed",
                outcome=err.reason or err.status,
                first_index=turn.first_index,
                timings={
                    "upstream_ms": turn.upstream_ms,
                    "total_ms": (time.perf_counter() - turn.started) * 1000,
                },
                upstream_label=self.s.upstream.label,
                upstream_status=None,
                error=err.message,
            )
            await self._append(turn, side)
            turn.content.closed()
        finally:
            self.s.metrics.turns.labels(_outcome_label(err)).inc()


def _outcome_label(err: GeminiError) -> str:
    if err.reason in ("POLICY_DENIED", "RATE_LIMITED"):
        return "denied"
    if err.reason == "HELD_FOR_REVIEW":
        return "held"
    if err.reason == "UPSTREAM_ERROR":
        return "upstream_error"
    return "bad_request" if 400 <= err.code < 500 else "error"


def _decision_body(decision: Decision, stage: str, input_ref: dict[str, Any]) -> dict[str, Any]:
    body = decision.record()
    body["stage"] = stage
    body.update(input_ref)
    return body


def _denied(decision: Decision) -> GeminiError:
    code = int(decision.obligations.get("status_code", 403) or 403)
    reason = "RATE_LIMITED" if code == 429 else "POLICY_DENIED"
    return GeminiError(
        code,
        "Custody's policy refused this turn: "
        + "; ".join(decision.reasons)
        + f" (decision {decision.decision_id}, policy revision {decision.bundle_revision[:12]}).",
        reason=reason,
    )


def _held(turn_id: str, decision: Decision, stage: str) -> GeminiError:
    what = "request" if stage == "request" else "output"
    return GeminiError(
        403,
        f"Custody's policy holds this turn's {what} for human review (turn {turn_id}): "
        + "; ".join(decision.reasons)
        + ". Nothing was released; a reviewer must approve it first.",
        status="PERMISSION_DENIED",
        reason="HELD_FOR_REVIEW",
    )


def _documents_of(result: UpstreamResult) -> tuple[list[dict[str, Any]], GeminiError | None]:
    """The upstream's JSON documents, or the Gemini error to hand the caller unchanged."""
    if result.status == 0:
        return [], GeminiError(
            502,
            f"Custody could not reach the upstream: {result.transport_error}.",
            status="UNAVAILABLE",
            reason="UPSTREAM_ERROR",
        )
    if result.status != 200:
        doc = parse_json_object(result.body) or {}
        err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
        details = err.get("details") if isinstance(err.get("details"), list) else []
        return [], GeminiError(
            result.status,
            str(err.get("message") or f"The upstream answered HTTP {result.status}."),
            status=str(err.get("status") or "") or None,
            reason="UPSTREAM_ERROR",
            details=details,
        )
    if result.events or not result.body:
        docs = [parse_json_object(e) for e in result.events]
        if not docs or any(d is None for d in docs):
            if result.events:
                return [], GeminiError(
                    502,
                    "The upstream stream carried a chunk that is not JSON.",
                    status="UNAVAILABLE",
                    reason="UPSTREAM_ERROR",
                )
            return [], GeminiError(
                502,
                "The upstream stream ended before its first chunk.",
                status="UNAVAILABLE",
                reason="UPSTREAM_ERROR",
            )
        return [d for d in docs if d is not None], None
    doc = parse_json_object(result.body)
    if doc is None:
        return [], GeminiError(
            502,
            "The upstream answered HTTP 200 with a body that is not JSON.",
            status="UNAVAILABLE",
            reason="UPSTREAM_ERROR",
        )
    return [doc], None


def _upstream_body(
    result: UpstreamResult, summary: ResponseSummary, ref: dict[str, Any], err: GeminiError | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": result.status,
        "elapsed_us": round(result.elapsed_ms * 1000),
        "model_version": summary.model_version,
        "response_id": summary.response_id,
        "finish_reasons": summary.finish_reasons,
        "block_reason": summary.block_reason,
        "safety": summary.safety_outcome if err is None else None,
        "usage": _int_only(summary.usage),
        "images": len(summary.images),
        "stream_complete": result.stream_complete,
    }
    body.update(ref)
    if err is not None:
        body["error"] = {"code": err.code, "status": err.status, "message": err.message}
    return body


def _int_only(value: Any) -> Any:
    """Ledger leaves hold no floats (RFC 8785 number forms differ across languages)."""
    if isinstance(value, float):
        return round(value * 1000)
    if isinstance(value, dict):
        return {k: _int_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int_only(v) for v in value]
    return value


def dumps(document: Any) -> bytes:
    """Serialise a response document (orjson: 3 ms where json.dumps takes 20 ms for 1024²)."""
    return orjson.dumps(document)
