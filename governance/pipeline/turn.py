"""The path of one edit turn: receive → decide → forward → decide → sign → record and release.

The orchestrator. Each stage is a module with the collaborators it uses (``receive``, ``decide``,
``forward``, ``signing``, ``release``); the turn's state is one record (``TurnState``); this
module alone decides the order, what runs off the event loop (parsing, facts, Rego, reading the
upstream's answer, signing, placing and serialising the signed documents), and when the queued
events become durable. The request gate and the release are explicit steps
(``decide_request``, ``decide_response``, ``release``); a gate that holds the turn hands it to
the review stage (``review_gate``), which waits for reviewers and lets the turn go on when
they approve — before its upstream call, or before its release (held outputs are signed only
after approval). The identical request of an approved held output is answered from that held
answer (``held_answer``) instead of the upstream.

Every step is a ledger event, and the events describing what the caller receives are durable
before the caller receives it. The intent (``upstream.requested``) is recorded before the upstream
call, so a crash in between shows in the ledger as a turn that never finished. A turn ends on
one closing path (``_close``): ``turn.released`` or ``turn.failed`` with the turn's index rows,
and the one rate-limit rule — a turn that releases nothing gives its reserved place back (a
response deny, an upstream error, a failure), except a turn held for review, which may still be
released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from governance.auth.principal import Principal
from governance.content import ContentRecorder, decision_input_bytes, upstream_bytes
from governance.ledger_vocabulary import UpstreamAttempt, ledger_event
from governance.metrics import Metrics
from governance.pipeline import refusal, release
from governance.pipeline.decide import (
    GateVerdict,
    PolicyGates,
    PolicyRefusal,
    request_verdict,
    response_verdict,
)
from governance.pipeline.errors import TurnError, internal_error, pushback_error
from governance.pipeline.forward import Forwarder, read_answer, returned_body
from governance.pipeline.leaf_bounds import bound_body
from governance.pipeline.lineage import SessionLinker, is_rollback, rollback_result
from governance.pipeline.parse import InputImage, ParsedRequest
from governance.pipeline.receive import Receiver, request_content, stored_request
from governance.pipeline.response import OutputImage
from governance.pipeline.review_gate import (
    ReviewGate,
    Stage,
    approved_before,
    request_hash,
    retry_wait_s,
)
from governance.pipeline.signing import OutputSigning, signed_body
from governance.pipeline.turn_types import (
    OutputPrint,
    SignedItem,
    TurnOutcome,
    TurnRequest,
    TurnState,
)
from governance.pipeline.url_inputs import (
    FETCH_OBLIGATION,
    InlinedRequest,
    UrlInliner,
    fetched_body,
    refused_url_inputs,
)
from governance.policy.decision import Decision
from governance.provenance.fingerprint import Fingerprint, staged_fingerprint
from governance.provenance.fingerprint_memo import FingerprintMemo
from governance.provenance.types import ProvenanceContext
from governance.recovery import FAILURE_NOT_RECORDED
from storage.ledger import Ledger
from storage.ledger.batching import LedgerPushback
from storage.ledger.events import SideRows
from storage.ledger.verify import sha256_hex
from storage.schema.turns import LABEL_COLUMNS

log = logging.getLogger("custody")
T = TypeVar("T")


class TurnPipeline:
    """Runs turns; one instance per app, built from the collaborators its stages use."""

    def __init__(
        self,
        *,
        receiver: Receiver,
        gates: PolicyGates,
        forwarder: Forwarder,
        signing: OutputSigning,
        review: ReviewGate,
        linker: SessionLinker,
        ledger: Ledger,
        content: ContentRecorder,
        metrics: Metrics,
        executor: Executor,
        url_inputs: UrlInliner | None = None,
        prints: FingerprintMemo | None = None,
        interrupt: Callable[[str, str], bool] | None = None,
    ) -> None:
        """``interrupt(turn_id, reason)`` closes an open turn of this process as interrupted
        (``governance.recovery.record_interrupted``), for a failure that could not be recorded."""
        self.interrupt = interrupt
        self.url_inputs = url_inputs
        self.prints = prints if prints is not None else FingerprintMemo()
        self.receiver = receiver
        self.gates = gates
        self.forwarder = forwarder
        self.signing = signing
        self.review = review
        self.linker = linker
        self.ledger = ledger
        self.content = content
        self.metrics = metrics
        self.executor = executor

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Byte-heavy or blocking work (parsing, hashing, Rego, c2pa, serialising)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args))

    # -- the turn, in order --------------------------------------------------------------------

    async def run(self, request: TurnRequest, principal: Principal) -> TurnOutcome:
        """Run one turn; raises ``TurnError`` for anything the caller must see as an error."""
        turn_id = refusal.new_record_id()
        state = TurnState(request, principal, turn_id, self.content.begin(turn_id))
        try:
            await self.receive(state)
            await self.decide_request(state)
            if state.replay is not None:
                await self.held_answer(state)
            elif is_rollback(state.request):
                await self.rolled_back(state)
            else:
                await self.forward(state)
            await self.decide_response(state)
            await self.sign(state)
            return await self.release(state)
        except TurnError as err:
            err.for_turn(turn_id)  # every error of a turn names it (x-custody-turn, ErrorInfo)
            if isinstance(err, PolicyRefusal):
                err.log(principal)
            await self._closed_as_failed(state, err)
            raise
        # The two branches below raise a new error without binding it in this frame: its
        # traceback holds this frame, so a local naming it would be a reference cycle keeping
        # the whole turn (request, answer, outputs: ~10 MB for a 1024² edit) until the next
        # full collection (docs/performance.md, "Failing turns hold no memory").
        except LedgerPushback as exc:
            # The ledger takes nothing more now: 503 + Retry-After, and the turn is closed as
            # failed (its rate-limit place given back) so its record is whole; if even that
            # append is pushed back, what was appended is closed at the next start-up.
            raise await self._closed_as_failed(
                state, pushback_error(exc.retry_after_ms), pushed_back=True
            ) from exc
        except Exception as exc:
            log.exception("turn %s failed inside Custody (tenant %s)", turn_id, principal.tenant)
            raise await self._closed_as_failed(state, internal_error(turn_id)) from exc
        finally:
            # Released, held, or given back by ``_close_failed``: the turn needs its
            # reservation no longer (a dict lookup, no database work).
            if state.decision is not None:
                self.gates.settle_reservation(state.decision)

    async def receive(self, state: TurnState) -> None:
        """Parse the request and commit to its content (``turn.received``).

        URL inputs the policy lets Custody fetch are fetched and inlined first (``url_inputs``):
        ``turn.received`` then describes the request as it will be forwarded, and
        ``url_inputs.fetched`` commits to the request as it arrived and says what was fetched."""
        body = state.request.body  # hashed in another worker thread while it is parsed
        parsed, body_sha256 = await asyncio.gather(
            self._off_loop(self.receiver.parse, state.request, state.principal.tenant),
            self._off_loop(sha256_hex, body),
        )
        inlined: InlinedRequest | None = None
        if parsed.files and self.url_inputs is not None:
            inlined, parsed = await self._inline_url_inputs(state, parsed)
        state.parsed = parsed
        digest = body_sha256 if parsed.body is body else None  # not if URLs were inlined
        made = await state.content.commitments(*request_content(state.parsed, digest))
        state.stored = stored_request(state.parsed, made)
        state.request_sha256 = state.stored.request_sha256
        state.lineage = await self._off_loop(self.linker.link, state)
        self._queue(
            state,
            "turn.received",
            self.receiver.received_body(state.request, state.parsed, state.stored),
        )
        for event_type, body in self.linker.opening_events(state.lineage, state.turn_id):
            self._queue_session(state, event_type, body)
        if inlined is not None:
            original, *contents = await state.content.commit(
                inlined.original_body, *(got.data for _, got in inlined.fetched)
            )
            self._queue(state, "url_inputs.fetched", fetched_body(inlined, original, contents))

    async def _inline_url_inputs(
        self, state: TurnState, parsed: ParsedRequest
    ) -> tuple[InlinedRequest | None, ParsedRequest]:
        """Ask the policy whether Custody may fetch this request's URL inputs (the decision on
        the request as sent; its rate-limit place goes straight back: the turn is decided again
        on what was fetched); if so fetch, inline and parse the rewritten request."""
        assert self.url_inputs is not None
        facts = await self._off_loop(
            self.gates.request_facts, state.principal, state.request, parsed
        )
        decision = await self._off_loop(self.gates.decide_request, facts)
        await self._off_loop(self.gates.give_back_reservation, decision)
        if decision.outcome == "deny" or not decision.obligations.get(FETCH_OBLIGATION):
            return None, parsed  # the request gate refuses it, recorded like any deny
        inlined = await self.url_inputs.inline(state.request, parsed, decision)
        state.request = inlined.request
        reparsed = await self._off_loop(self.receiver.parse, state.request, state.principal.tenant)
        return inlined, reparsed

    async def decide_request(self, state: TurnState) -> None:
        """The request gate; on a pass, the intent ``upstream.requested`` is made durable."""
        assert state.parsed is not None
        facts = await self._off_loop(
            self.gates.request_facts, state.principal, state.request, state.parsed
        )
        if state.lineage is not None:  # the session's facts: its id, its images' provenance
            facts = replace(
                facts,
                session_id=state.lineage.session_id,
                lineage=tuple(p.facts() for p in state.lineage.provenance),
            )
        state.facts = facts
        state.decision = await self._off_loop(self.gates.decide_request, state.facts)
        assert state.stored is not None
        state.review_hash = request_hash(state.request, state.stored.request_sha256)
        state.prior = await self._off_loop(
            self.review.prior, state.principal.tenant, state.review_hash
        )
        input_ref = await self._decision_input(state, "request", state.decision)
        verdict = request_verdict(state.turn_id, state.decision, input_ref)
        if state.parsed.files and (verdict.refusal is None or verdict.review is not None):
            # allowed or held, but not fetched: a URL Custody did not see never goes upstream
            self._queue(state, "policy.decided", verdict.decided)
            await self._append(state)
            raise refused_url_inputs(state.parsed)
        await self._apply(state, verdict, "request")
        prior = state.prior
        if prior is not None and prior.stage == "response":
            # The identical request's output is (or was) held: release the approved one, never
            # ask the upstream again; refused or still pending, say so.
            wait_s = retry_wait_s(state.decision)
            state.replay = await self.review.settle(prior, state.turn_id, wait_s)
            state.review_tasks.append(state.replay)
            await self._append(state)
            return
        if not is_rollback(state.request):
            self._queue(state, "upstream.requested", self.forwarder.requested_body(state.request))
        await self._append(state)  # the intent is durable before anything leaves for upstream

    async def held_answer(self, state: TurnState) -> None:
        """Instead of the upstream call: the answer an approved response-stage task held."""
        assert state.replay is not None
        result = await self._off_loop(self.review.held_answer, state.replay, state.request.stream)
        state.result = result
        answer = await self._off_loop(read_answer, state.request, result)
        state.documents, state.summary = answer.documents, answer.summary
        if answer.error is not None:
            raise answer.error

    async def rolled_back(self, state: TurnState) -> None:
        """Instead of the upstream call: a rollback's output is the earlier version itself,
        re-signed (no upstream call; ``lineage.recorded`` says it is a rollback)."""
        assert state.parsed is not None
        result = rollback_result(state.parsed)
        state.result = result
        answer = await self._off_loop(read_answer, state.request, result)
        state.documents, state.summary = answer.documents, answer.summary
        if answer.error is not None:
            raise answer.error

    async def forward(self, state: TurnState) -> None:
        """The upstream call (retried as the tenant allows: each retried attempt is recorded
        as ``upstream.attempt``, durable before the next one leaves); its answer is read (off
        the loop) and recorded. Nothing has gone to the caller yet, so a retry never follows
        bytes the caller received."""
        tenant = state.principal.tenant

        async def record_attempt(body: UpstreamAttempt) -> None:
            self.metrics.upstream_attempts.labels(tenant, body["outcome"]).inc()
            self._queue(state, "upstream.attempt", body)
            await self._append(state)

        # The inputs' fingerprints are computed in a worker thread while the upstream works
        # (not earlier: decoding holds the GIL for much of its ~25 ms, which the gates' own work
        # would wait for); the closing append waits for them (their rows go with the index rows).
        self._fingerprint_inputs(state)
        started = time.perf_counter()
        sent = await self.forwarder.send(state.request, tenant, record_attempt)
        result = sent.result
        state.result = result
        if sent.attempt > 1:  # waits and failed attempts are the upstream's time, not Custody's
            state.upstream_phase_ms = (time.perf_counter() - started) * 1000
        self.metrics.upstream_attempts.labels(tenant, sent.step.outcome).inc()
        self.metrics.upstream_latency.labels(tenant).observe(result.elapsed_ms / 1000)
        raw = upstream_bytes(result)  # hashed in another worker thread while it is read
        answer, raw_sha256 = await asyncio.gather(
            self._off_loop(read_answer, state.request, result), self._off_loop(sha256_hex, raw)
        )
        state.documents, state.summary = answer.documents, answer.summary
        if answer.error is None:
            self._fingerprint_outputs(state)  # beside the answer's blob and the response gate
        response_ref = await state.content.upstream_response(raw, raw_sha256)
        self._queue(state, "upstream.returned", returned_body(result, answer, response_ref, sent))
        if answer.error is not None:
            await self._append(state)
            raise answer.error

    async def decide_response(self, state: TurnState) -> None:
        """The response gate, on what the upstream answered."""
        assert state.facts is not None and state.decision is not None
        assert state.summary is not None
        decision = await self._off_loop(self.gates.decide_response, state.facts, state.summary)
        state.response_decision = decision
        input_ref = await self._decision_input(state, "response", decision)
        await self._apply(
            state, response_verdict(state.turn_id, state.decision, decision, input_ref), "response"
        )

    async def sign(self, state: TurnState) -> None:
        """Sign every output image in parallel worker threads (``output.signed`` each); each
        signature starts once its image's ISCC is known, while its PDQ is still computed."""
        assert state.summary is not None
        lineage, images = state.lineage, state.summary.images
        if images:
            ctx = self.signing.context(state)
            contexts = [ctx] * len(images)
            if lineage is not None:  # each output's manifest names its own version
                outs = await self._off_loop(
                    self.linker.allocate, lineage, [img.data for img in images]
                )
                contexts = [replace(ctx, lineage=lineage.manifest_facts(o)) for o in outs]
            prints = self._fingerprint_outputs(state)
            state.signed = list(
                await asyncio.gather(
                    *(
                        self._signed(img, c, found)
                        for img, c, found in zip(images, contexts, prints, strict=True)
                    )
                )
            )
        for n, item in enumerate(state.signed):
            if item.fingerprint is not None:  # the next turn may edit either file
                for digest in (item.upstream_sha256, item.output.sha256):
                    self.prints.remember(state.principal.tenant, digest, item.fingerprint)
            ref = await state.content.signed_output(item.output)
            if lineage is not None:
                self.linker.signed(lineage.outputs[n], item, ref)
            self._queue(state, "output.signed", signed_body(item, ref))

    async def _signed(
        self, img: OutputImage, ctx: ProvenanceContext, prints: OutputPrint
    ) -> SignedItem:
        """One output signed with its ISCC as the soft binding, its fingerprint beside it."""
        await asyncio.wait((prints.iscc, prints.found), return_when=asyncio.FIRST_COMPLETED)
        if prints.iscc.done():
            code = prints.iscc.result()
        else:  # the fingerprint ended without telling its code: it raised (raised here)
            ended = await prints.found
            code = ended.iscc if ended is not None else None
        digest = await prints.sha256
        signing = self._off_loop(self.signing.sign_one, img, ctx, code, digest)
        item, found = await asyncio.gather(signing, prints.found)
        return replace(item, fingerprint=found)

    def _fingerprint_outputs(self, state: TurnState) -> list[OutputPrint]:
        """The output images' fingerprints, started once per turn (``OutputPrint``)."""
        if state.output_prints is None:
            assert state.summary is not None
            loop = asyncio.get_running_loop()
            prints = []
            for img in state.summary.images:
                iscc: asyncio.Future[str | None] = loop.create_future()
                told = _teller(loop, iscc)
                found = loop.run_in_executor(self.executor, staged_fingerprint, img.data, told)
                digest = loop.run_in_executor(self.executor, sha256_hex, img.data)
                prints.append(OutputPrint(iscc, found, digest))
            state.output_prints = prints
        return state.output_prints

    async def release(self, state: TurnState) -> TurnOutcome:
        """Release the signed response: ``turn.released`` and the turn's index rows are durable
        before a byte goes back to the caller."""
        # The signed documents are placed and serialised in a worker thread while the closing
        # append waits for the outputs' blobs; the append waits for them in turn, so a response
        # that cannot be built is never recorded as released.
        outgoing = asyncio.ensure_future(self._off_loop(release.outgoing, state))
        summary = state.summary
        assert summary is not None
        total_ms = state.elapsed_ms()
        closing = len(state.events)
        if state.lineage is not None:
            for body in self.linker.closing_bodies(state.lineage, state.turn_id, "released"):
                self._queue_session(state, "lineage.recorded", body)
        self._queue(state, "turn.released", release.released_body(state, total_ms))
        row = release.turn_row(
            state,
            status="released",
            outcome=summary.safety_outcome,
            total_ms=total_ms,
            upstream_label=self.forwarder.label,
        )
        try:
            await self._close(state, row, before_append=outgoing)
        except BaseException:
            # Not released: the failure record carries the turn's other queued events, never
            # a ``turn.released`` (or a lineage closed as released) for a response never sent.
            del state.events[closing:]
            if not outgoing.done():
                outgoing.cancel()
            raise
        documents, serialised = outgoing.result()
        state.released = True
        outcome = (
            "released" if summary.safety_outcome == "ok" else f"released_{summary.safety_outcome}"
        )
        self.metrics.turns.labels(state.principal.tenant, outcome).inc()
        self.metrics.added_latency.labels(state.principal.tenant).observe(
            max(total_ms - state.upstream_ms, 0) / 1000
        )
        return TurnOutcome(
            documents,
            serialised,
            state.request.stream,
            state.turn_id,
            tenant=state.principal.tenant,
            actor=state.principal.actor,
            session=state.session_id,
            lineage=state.lineage,
        )

    # -- recording -----------------------------------------------------------------------------

    def _queue(self, state: TurnState, event_type: str, body: Any) -> None:
        """Queue an event (built through the ledger vocabulary); any oversized value in its
        body moves to a committed blob."""
        event = ledger_event(
            event_type,
            body,
            tenant=state.principal.tenant,
            actor=state.principal.actor,
            session=state.session_id,
            turn=state.turn_id,
        )
        state.events.append(replace(event, body=bound_body(event.body, state.content.commit_now)))

    def _queue_session(self, state: TurnState, event_type: str, body: Any) -> None:
        """Queue a session event of the turn: the session's record, not one of the turn's
        steps, so its envelope names the session and its body the turn."""
        event = ledger_event(
            event_type,
            body,
            tenant=state.principal.tenant,
            actor=state.principal.actor,
            session=state.session_id,
        )
        state.events.append(event)

    async def _decision_input(self, state: TurnState, stage: str, decision: Decision) -> str:
        """Commit to the full input ``decision`` was made on (serialised off the loop)."""
        data = await self._off_loop(decision_input_bytes, decision.input_document)
        return await state.content.decision_input(stage, data)

    async def _apply(self, state: TurnState, verdict: GateVerdict, stage: Stage) -> None:
        """Record a gate's decision; a deny ends the turn here, a hold waits for review
        (``review_gate``): approved, the turn goes on; otherwise its refusal ends it."""
        self._queue(state, "policy.decided", verdict.decided)
        if verdict.refusal is None:
            return
        if verdict.review is None:
            await self._append(state)
            raise verdict.refusal
        if stage == "response" and approved_before(state, verdict.refusal.decision):
            return  # the request's reviewers already approved these very reasons
        self._queue(state, "review.requested", verdict.review)
        state.held = True
        await self._append(state)  # the hold is durable before a task names the turn
        verdict.refusal.for_turn(state.turn_id)
        verdict.refusal.log(state.principal)
        prior = state.prior if state.prior is not None and state.prior.stage == stage else None
        task = await self.review.hold(state, stage, verdict.refusal.decision, self._off_loop, prior)
        state.held = False  # approved: from here the turn is like any other
        if all(t.task_id != task.task_id for t in state.review_tasks):
            state.review_tasks.append(task)

    async def _append(self, state: TurnState, side: Sequence[SideRows] = ()) -> None:
        """Make the queued events durable (one group-committed append) before going on.

        Every blob those events commit to is durable first, and its salt commits in the same
        transaction (``TurnContent.durable_rows``): no leaf ever refers to unopenable content."""
        if not state.events:
            return
        salts = [] if side else await state.content.durable_rows()  # closing rows carry theirs
        events, state.events = state.events, []
        try:
            entries = await self._off_loop(self.ledger.append, events, [*salts, *side])
        except BaseException:
            # Not appended (the ledger resolves an unknown outcome itself: a batch is never
            # written twice): the events and salts go with the turn's closing append instead,
            # so its record stays complete and its index rows never name a missing event.
            state.events[:0] = events
            state.content.carry(salts)
            raise
        if state.first_index is None:
            state.first_index = entries[0].index

    def _fingerprint_inputs(self, state: TurnState) -> asyncio.Future[list[Fingerprint | None]]:
        """The inputs' fingerprints, started once per turn (for a turn that never reaches the
        upstream, by its closing append); none before the request is parsed."""
        if state.input_fingerprints is None:
            images = state.parsed.edited_images if state.parsed is not None else []
            state.input_fingerprints = asyncio.ensure_future(
                self._off_loop(self._input_fingerprints, state.principal.tenant, images)
            )
        return state.input_fingerprints

    def _input_fingerprints(
        self, tenant: str, images: Sequence[InputImage]
    ) -> list[Fingerprint | None]:
        """Each input image's fingerprints (blocking): remembered when the same bytes were seen
        before — a session's parent is usually its previous output — else computed."""
        return [self.prints.fingerprint(tenant, img.data, img.sha256) for img in images]

    async def _close(
        self,
        state: TurnState,
        row: dict[str, Any],
        *,
        before_append: asyncio.Future[Any] | None = None,
    ) -> None:
        """The one closing append: the queued closing event with every salt and index row.
        ``before_append`` (the release's outgoing documents) must succeed before it is made."""
        inputs = await self._fingerprint_inputs(state)
        side = await state.content.closing_rows(
            row,
            release.image_rows(state, outputs=row["status"] == "released"),
            release.fingerprint_rows(state, inputs, row["finished_ms"]),
        )
        if not state.content.is_closed:
            side += self.linker.closing_rows(state, row["status"], row.get("error"))
            labels = release.label_rows(state, row)
            if labels:
                side.append(SideRows("turn_labels", LABEL_COLUMNS, labels))
        try:
            if before_append is not None:
                await before_append
            await self._append(state, side)
        except BaseException:
            state.content.closing_failed()  # else the failure record would cite unsalted blobs
            raise
        state.content.closed()

    async def _closed_as_failed(
        self, state: TurnState, err: TurnError, *, pushed_back: bool = False
    ) -> TurnError:
        """``err`` for this turn, once the turn is recorded as failed with it.

        The caller gets ``err`` even when that record cannot be written (a second failure
        escaping here gave a bare 500 or a dropped connection instead of Gemini's envelope):
        when the blob store or the database fails again (the record retries the turn's blob
        writes once), the turn is closed at once as interrupted with what the ledger already
        holds (``interrupt``); when that fails too, or, with ``pushed_back`` (the ledger refused
        an append), the ledger refuses this one as well, the next start-up closes it
        (``governance.recovery``)."""
        err.for_turn(state.turn_id)
        try:
            await self._close_failed(state, err)
        except LedgerPushback:
            if not pushed_back:
                raise
            log.warning(
                "turn %s: its failure record was pushed back too; the next start-up records"
                " the turn as interrupted",
                state.turn_id,
            )
        except Exception:
            log.exception(
                "turn %s: its failure record could not be written either; the caller gets its"
                " error and the turn is recorded as interrupted",
                state.turn_id,
            )
            await self._interrupted_now(state)
        return err

    async def _interrupted_now(self, state: TurnState) -> None:
        """Close the turn as interrupted now (``interrupt``), if it can be; else start-up will."""
        if self.interrupt is None:
            return
        try:
            await self._off_loop(self.interrupt, state.turn_id, FAILURE_NOT_RECORDED)
        except Exception:
            log.exception(
                "turn %s could not be recorded as interrupted now; the next start-up will",
                state.turn_id,
            )

    async def _close_failed(self, state: TurnState, err: TurnError) -> None:
        """Record why the turn ended without a release; the error still reaches the caller.

        A turn that releases nothing does not count against the caller's budget: its reserved
        rate-limit place goes back, unless a gate held it for review."""
        try:
            if state.decision is not None and not state.held:
                await self._off_loop(self.gates.give_back_reservation, state.decision)
            body: dict[str, Any] = dict(release.failed_body(err))
            if state.parsed is None:  # refused before parsing: keep what was sent, committed
                kept, state.request_sha256 = await state.content.rejected_body(state.request.body)
                body.update(kept)
            if state.lineage is not None:
                for part in self.linker.closing_bodies(state.lineage, state.turn_id, "failed"):
                    self._queue_session(state, "lineage.recorded", part)
            self._queue(state, "turn.failed", body)
            row = release.turn_row(
                state,
                status="failed",
                outcome=err.reason or err.status,
                total_ms=state.elapsed_ms(),
                upstream_label=self.forwarder.label,
                error=err.message,
            )
            await self._close(state, row)
        finally:
            self.metrics.turns.labels(state.principal.tenant, _outcome_label(err)).inc()

    async def record_refusal(self, principal: Principal, err: TurnError, **where: Any) -> TurnError:
        """Record a refusal before any turn began (``request.refused``, see ``refusal``)."""
        return await refusal.record_refusal(
            principal,
            err,
            ledger=self.ledger,
            commitments=self.content.commitments,
            off_loop=self._off_loop,
            **where,
        )

    async def record_undelivered(self, outcome: TurnOutcome, *, stage: str, sent: int) -> None:
        """The caller went away: a released turn's response did not (fully) reach it.

        Appended after ``turn.released`` (the ledger never edits an entry): ``stage`` is
        ``before_send`` (nothing was sent) or ``mid_stream`` (``sent`` stream events were).
        """
        event = ledger_event(
            "turn.undelivered",
            {
                "stage": stage,
                "events_sent": sent,
                "events_total": len(outcome.documents) if outcome.stream else 1,
                "reason": "the client disconnected before the response was delivered",
            },
            tenant=outcome.tenant,
            actor=outcome.actor,
            session=outcome.session,
            turn=outcome.turn_id,
        )
        await self._off_loop(self.ledger.append, [event])
        self.metrics.turns.labels(outcome.tenant, "undelivered").inc()


def _teller(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[str | None]
) -> Callable[[str | None], None]:
    """A callback for a worker thread: settles ``future`` with its value on ``loop``."""

    def tell(value: str | None) -> None:
        loop.call_soon_threadsafe(_settle, future, value)

    return tell


def _settle(future: asyncio.Future[str | None], value: str | None) -> None:
    if not future.done():
        future.set_result(value)


def _outcome_label(err: TurnError) -> str:
    if err.reason in ("POLICY_DENIED", "RATE_LIMITED", "REVIEW_REJECTED"):
        return "denied"
    if err.reason == "HELD_FOR_REVIEW":
        return "held"
    if err.reason in ("UPSTREAM_ERROR", "UPSTREAM_CIRCUIT_OPEN"):
        return "upstream_error"
    return "bad_request" if 400 <= err.code < 500 else "error"
