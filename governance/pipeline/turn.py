"""The path of one edit turn: receive → policy → upstream → policy → sign → release.

Every step is a ledger event, and the events describing what the caller receives are durable
before the caller receives it. The intent (``upstream.requested``) is recorded before the upstream
call, so a crash in between shows in the ledger as a turn that never finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from governance import __version__
from governance.api.errors import GeminiError
from governance.auth.principal import Principal
from governance.content import TurnContent
from governance.pipeline.leaf_bounds import bound_body
from governance.pipeline.parse import InputLimits, ParsedRequest, parse_request
from governance.pipeline.policy_facts import request_facts, response_facts
from governance.pipeline.refusal import new_record_id
from governance.pipeline.response import (
    ResponseSummary,
    replace_images,
    summarise,
    unsigned_inline_data,
)
from governance.pipeline.signing import sign_outputs
from governance.upstream.client import UpstreamResult, parse_json_object
from storage.ledger.batching import LedgerPushback
from storage.ledger.events import LedgerEvent, SideRows

if TYPE_CHECKING:
    from governance.policy.decision import Decision
    from governance.services import Services

log = logging.getLogger("custody")


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
    tenant: str = ""
    actor: str = ""
    session: str | None = None


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
        """Queue an event; any oversized value in ``body`` moves to a committed blob."""
        ev = LedgerEvent(
            type=type_,
            tenant=self.principal.tenant,
            actor=self.principal.actor,
            session=self.request.headers.get("x-custody-session"),
            turn=self.turn_id,
            body=bound_body(body, self.content.commit_now),
        )
        self.events.append(ev)
        return ev


class TurnPipeline:
    """Runs turns against the process's services; one instance per app."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def _append(self, turn: _Turn, side: Sequence[SideRows] = ()) -> None:
        """Make the queued events durable (one group-committed append) before going on.

        Every blob those events commit to is durable first, and its salt commits in the same
        transaction (``TurnContent.durable_rows``): no leaf ever refers to unopenable content."""
        if not turn.events:
            return
        events, turn.events = turn.events, []
        salts = [] if side else await turn.content.durable_rows()  # closing rows carry their own
        entries = await self.s.run_blocking(self.s.ledger.append, events, [*salts, *side])
        if turn.first_index is None:
            turn.first_index = entries[0].index

    async def run(self, request: TurnRequest, principal: Principal) -> TurnOutcome:
        """Run one turn; raises ``GeminiError`` for anything the caller must see as an error."""
        turn_id = new_record_id()
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
            err.for_turn(turn_id)  # every error of a turn names it (x-custody-turn, ErrorInfo)
            if isinstance(err, PolicyRefusal):
                err.log(principal)
            await self._fail(turn, parsed, err)
            raise
        except LedgerPushback:  # the ledger takes nothing more now: the app answers 503
            raise
        except Exception as exc:
            log.exception("turn %s failed inside Custody (tenant %s)", turn_id, principal.tenant)
            failure = GeminiError(
                500,
                f"Custody failed while handling this turn (turn {turn_id}); nothing was released"
                " and the turn is recorded as failed. The cause is in Custody's server log under"
                " this turn id: give it to your Custody administrator if retrying does not help.",
                reason="INTERNAL_ERROR",
            ).for_turn(turn_id)
            await self._fail(turn, parsed, failure)
            raise failure from exc

    async def _run_parsed(self, turn: _Turn, parsed: ParsedRequest) -> TurnOutcome:
        s = self.s
        request = turn.request
        stored = await turn.content.request(parsed)
        received = stored.received_body(request, parsed)
        received["process"] = s.instance.leaf_body()  # whose turn it is, for crash recovery
        turn.event("turn.received", received)

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
        s.metrics.upstream_latency.labels(turn.principal.tenant).observe(result.elapsed_ms / 1000)

        documents, upstream_error = _documents_of(result)
        summary = ResponseSummary()
        if upstream_error is None:
            summary = await s.run_blocking(summarise, documents)  # sniffs and reads headers
            if request.stream:  # complete only if its last chunk says it finished
                result.stream_complete = result.stream_complete and summary.final_chunk
            upstream_error = _unreleasable(request, result, summary)
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
            raise _denied(out_decision, "response")
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
        placed = replace_images(documents, {item.position: item.output.data for item in signed})
        if len(signed) != len(summary.images) or unsigned_inline_data(documents, placed):
            await self._append(turn)
            raise GeminiError(
                500,
                "Custody refused to release this turn: its response would have carried an image"
                " Custody did not sign. Nothing was released; report this turn id to the operator.",
                reason="UNSIGNED_OUTPUT",
            )

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
        s.metrics.turns.labels(turn.principal.tenant, outcome).inc()
        s.metrics.added_latency.labels(turn.principal.tenant).observe(
            max(total_ms - turn.upstream_ms, 0) / 1000
        )
        return TurnOutcome(
            documents,
            request.stream,
            turn.turn_id,
            tenant=turn.principal.tenant,
            actor=turn.principal.actor,
            session=request.headers.get("x-custody-session"),
        )

    async def record_undelivered(self, outcome: TurnOutcome, *, stage: str, sent: int) -> None:
        """The caller went away: a released turn's response did not (fully) reach it.

        Appended after ``turn.released`` (the ledger never edits an entry): ``stage`` is
        ``before_send`` (nothing was sent) or ``mid_stream`` (``sent`` stream events were).
        """
        event = LedgerEvent(
            type="turn.undelivered",
            tenant=outcome.tenant,
            actor=outcome.actor,
            session=outcome.session,
            turn=outcome.turn_id,
            body={
                "stage": stage,
                "events_sent": sent,
                "events_total": len(outcome.documents) if outcome.stream else 1,
                "reason": "the client disconnected before the response was delivered",
            },
        )
        await self.s.run_blocking(self.s.ledger.append, [event])
        self.s.metrics.turns.labels(outcome.tenant, "undelivered").inc()

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
            self.s.metrics.turns.labels(turn.principal.tenant, _outcome_label(err)).inc()


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


class PolicyRefusal(GeminiError):
    """A turn the policy denied or held: the caller's error, with the decision it came from.

    The two answers are told apart by status code and status, not only by a nested reason:

    - denied: HTTP 403 ``PERMISSION_DENIED``, ErrorInfo reason ``POLICY_DENIED`` (or the
      policy's own ``status_code`` obligation, e.g. 429 ``RATE_LIMITED``);
    - held: HTTP 409 ``ABORTED``, ErrorInfo reason ``HELD_FOR_REVIEW``. google.rpc's ABORTED
      means "the operation was aborted; retry at a higher level" — here: do not resend the same
      request, wait for the reviewer. 409 is a client error the google-genai SDK never retries:
      neither by default nor with ``HttpRetryOptions``' default codes (408, 429, 500, 502, 503,
      504), so a held turn is not resent (and held again) behind the user's back.

    Both carry ErrorInfo metadata ``turn_id``, ``decision_id`` and ``stage``.
    """

    def __init__(
        self, code: int, message: str, *, reason: str, decision: Decision, stage: str
    ) -> None:
        super().__init__(code, message, reason=reason)
        self.decision = decision
        self.stage = stage
        self.metadata.update(decision_id=decision.decision_id, stage=stage)

    def log(self, principal: Principal) -> None:
        """Log the refusal for operators: who, which decision, why (never the prompt)."""
        log.warning(
            "turn %s %s at %s: tenant=%s actor=%s decision=%s reasons=%s",
            self.turn_id,
            "held for review" if self.reason == "HELD_FOR_REVIEW" else "denied",
            self.stage,
            principal.tenant,
            principal.actor,
            self.decision.decision_id,
            "; ".join(self.decision.reasons),
        )


def _denied(decision: Decision, stage: str = "request") -> PolicyRefusal:
    code = int(decision.obligations.get("status_code", 403) or 403)
    reason = "RATE_LIMITED" if code == 429 else "POLICY_DENIED"
    return PolicyRefusal(
        code,
        "Custody's policy refused this turn: "
        + "; ".join(decision.reasons)
        + f" (decision {decision.decision_id}, policy revision {decision.bundle_revision[:12]}).",
        reason=reason,
        decision=decision,
        stage=stage,
    )


def _held(turn_id: str, decision: Decision, stage: str) -> PolicyRefusal:
    what = "request" if stage == "request" else "output"
    return PolicyRefusal(
        409,
        f"Custody's policy holds this turn's {what} for human review: "
        + "; ".join(decision.reasons)
        + f". Nothing was released: a reviewer must approve it; it is recorded as turn {turn_id}"
        " (ledger events review.requested). Sending the same request again starts a new turn"
        " that is held the same way.",
        reason="HELD_FOR_REVIEW",
        decision=decision,
        stage=stage,
    )


def _upstream_fault(message: str, reason: str, code: int = 502) -> GeminiError:
    return GeminiError(code, message, reason=reason)


def _error_of(doc: dict[str, Any], http_status: int) -> GeminiError:
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
    return GeminiError(
        code,
        str(message) if message else f"The upstream answered HTTP {http_status} with an error.",
        status=str(status)[:64] if status and code in (http_status, inner) else None,
        reason="UPSTREAM_ERROR",
        details=[d for d in details if isinstance(d, dict)],
    )


def _documents_of(result: UpstreamResult) -> tuple[list[dict[str, Any]], GeminiError | None]:
    """The upstream's JSON documents, or the Gemini error to hand the caller.

    The upstream's own errors keep their code; what the upstream got wrong (bodies that are not
    JSON, timeouts) is a 5xx naming the upstream, never a 4xx blaming the caller.
    """
    if result.status == 0:
        if result.timed_out:
            return [], GeminiError(
                504,
                f"The upstream did not answer in time ({result.transport_error}); Custody"
                " released nothing. Retry later, or raise CUSTODY_UPSTREAM_TIMEOUT_S.",
                reason="UPSTREAM_TIMEOUT",
            )
        return [], GeminiError(
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
) -> GeminiError | None:
    """Why a well-formed upstream answer still cannot be released (or None)."""
    if summary.fault is not None:
        return _upstream_fault(summary.fault.message, summary.fault.reason)
    if request.stream and not result.stream_complete:
        if result.timed_out:
            return GeminiError(
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


def _upstream_body(
    result: UpstreamResult, summary: ResponseSummary, ref: dict[str, Any], err: GeminiError | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": result.status,
        "elapsed_us": round(result.elapsed_ms * 1000),
        "model_version": summary.model_version,
        "response_id": summary.response_id,
        "finish_reasons": list(dict.fromkeys(summary.finish_reasons)),  # distinct, in order
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
    """Ledger leaves hold no floats (RFC 8785 number forms differ across languages) and no
    integer beyond ±(2^53 - 1), which RFC 8785 cannot carry: an upstream's such number is kept
    as its decimal text."""
    if isinstance(value, float):
        value = round(value * 1000) if abs(value) < 2**53 / 1000 else str(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53 - 1:
        return str(value)
    if isinstance(value, dict):
        return {k: _int_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int_only(v) for v in value]
    return value


def dumps(document: Any) -> bytes:
    """Serialise a response document (orjson: 3 ms where json.dumps takes 20 ms for 1024²)."""
    return orjson.dumps(document)
