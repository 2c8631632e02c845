"""Stage 2b and 4b, review: a turn a gate holds waits for people, then goes on or is refused.

The review desk (``governance.review``) is this stage's collaborator. When a gate holds a turn
the stage opens a task — or, for the identical request sent again (same tenant, same request
hash), finds the one already open — and holds the caller's connection up to the policy's
``review_wait_s`` (``desk.wait`` polls the database, so a decision taken in any gateway process
on the same database ends the wait):

- approved (and its outcome recorded): the turn goes on; its approvals go into every manifest;
- rejected, changes requested, expired: 403 ``REVIEW_REJECTED`` with the reason;
- still open: 409 ``HELD_FOR_REVIEW`` naming the turn, the task, its console page and what to do.

What the reviewer is shown (``Shown``) is named by the turn's salted commitments to the request,
prompt, input images and masks (what the ledger already holds) and, for a held output, by the
SHA-256 of each image exactly as the upstream returned it (``output.signed`` publishes the same
``upstream_sha256``). Held outputs are signed only after the approval, so the manifest lists it;
the upstream's answer is already a committed blob (``upstream.returned``'s ``response``), which
is what a retry in any process releases without calling the upstream again.

Blocking desk calls run off the event loop (``off_loop``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from governance.pipeline.errors import TurnError
from governance.pipeline.turn_types import TurnRequest, TurnState
from governance.policy.decision import Decision
from governance.review import HeldTurn, ReviewDesk, ReviewTask, ReviewTerms, Shown
from governance.review.errors import ReviewError
from governance.upstream.client import UpstreamResult
from storage.blobs import Commitments
from storage.ledger import Ledger

OffLoop = Callable[..., Awaitable[Any]]
Stage = Literal["request", "response"]


def request_hash(request: TurnRequest, body_sha256: str) -> str:
    """What makes two requests identical: route (API version, model, method) and raw body, the
    body by the SHA-256 the turn already took of it (never a second pass over its bytes)."""
    key = f"{request.api_version}\n{request.model}\n{request.method}\n{body_sha256}"
    return hashlib.sha256(key.encode()).hexdigest()


def shown_for(state: TurnState, stage: Stage) -> Shown:
    """What a reviewer of ``state`` is shown, as commitments (outputs: the upstream's bytes)."""
    stored = state.stored
    assert stored is not None
    outputs: tuple[str, ...] = ()
    if stage == "response":
        assert state.summary is not None
        outputs = tuple(hashlib.sha256(img.data).hexdigest() for img in state.summary.images)
    return Shown(
        request=stored.request_commitment,
        prompt=stored.prompt_commitment,
        inputs=tuple(stored.image_commitments),
        masks=tuple(stored.mask_commitments),
        outputs=outputs,
    )


def retry_wait_s(decision: Decision) -> int:
    """How long the identical request of a held output waits: the tenant's ``review_wait_s``
    when the request decision carries review terms (``review_output``), else 0."""
    try:
        return ReviewTerms.from_obligations(decision.obligations).wait_s
    except ReviewError:
        return 0


def approved_before(state: TurnState, decision: Decision) -> bool:
    """A response-stage ``review`` the request's approval already answers: the policy holds
    the answer for reasons (all of them) that the approved request-stage task was opened for.
    Policies that decide on the request alone say ``review`` at both gates; people approve it
    once. ``review_output`` and new response reasons (what the model made) hold the output."""
    if decision.outcome != "review":
        return False
    approved = {
        reason
        for task in state.review_tasks
        if task.stage == "request" and task.status == "approved"
        for reason in task.reasons
    }
    return bool(approved) and set(decision.reasons) <= approved


def console_link(task: ReviewTask) -> str:
    return f"/console/reviews/{task.task_id}"


def pending_error(task: ReviewTask, turn_id: str) -> TurnError:
    """409 ABORTED ``HELD_FOR_REVIEW``: the task is still open when the wait ends."""
    what = "request" if task.stage == "request" else "output"
    again = " (it is still pending)" if task.turn_id != turn_id else ""
    err = TurnError(
        409,
        f"Custody holds this turn's {what} for human review{again}: "
        + "; ".join(task.reasons)
        + f". Turn {turn_id}, review task {task.task_id} (reviewers: {task.reviewer_group},"
        f" {task.approvals}/{task.approvals_required} approvals; console"
        f" {console_link(task)}). Nothing was released. Once it is approved, send the same"
        " request again: Custody releases the approved result"
        + (" without calling the model again." if task.stage == "response" else "."),
        reason="HELD_FOR_REVIEW",
    )
    err.metadata.update(review_task=task.task_id, stage=task.stage, console=console_link(task))
    return err


def refused_error(task: ReviewTask) -> TurnError:
    """403 ``REVIEW_REJECTED``: a reviewer rejected or asked for changes, or the deadline
    passed; the message carries the reason."""
    how = {
        "rejected": "rejected",
        "changes_requested": "sent back for changes",
        "expired": "not decided before its deadline and so rejected",
    }[task.status]
    err = TurnError(
        403,
        f"Review task {task.task_id} for this {task.stage} was {how}: {task.reason}"
        f" (turn {task.turn_id}). Nothing was released; change the request and send it again.",
        reason="REVIEW_REJECTED",
    )
    err.metadata.update(review_task=task.task_id, stage=task.stage, status=task.status)
    return err


class ReviewGate:
    """Opens, finds and waits on review tasks for held turns; loads an approved held answer."""

    def __init__(self, desk: ReviewDesk, ledger: Ledger, commitments: Commitments) -> None:
        self._desk = desk
        self._ledger = ledger
        self._commitments = commitments

    def prior(self, tenant: str, hashed: str) -> ReviewTask | None:
        """The newest task of the identical request (blocking)."""
        return self._desk.find_by_request_hash(tenant, hashed)

    async def hold(
        self,
        state: TurnState,
        stage: Stage,
        decision: Decision,
        off_loop: OffLoop,
        task: ReviewTask | None = None,
    ) -> ReviewTask:
        """Open a task for ``state`` (unless the identical request's ``task`` exists), wait up
        to the tenant's ``review_wait_s``, and return it approved — or raise the refusal."""
        try:
            terms = ReviewTerms.from_obligations(decision.obligations)
            if task is None:
                held = HeldTurn(
                    tenant=state.principal.tenant,
                    turn_id=state.turn_id,
                    stage=stage,
                    requester=state.principal.actor,
                    requester_key=state.principal.key_id,
                    session=state.session_id,
                    request_hash=state.review_hash or "",
                    shown=shown_for(state, stage),
                    reasons=tuple(decision.reasons),
                )
                task = await off_loop(self._desk.open, held, decision.obligations)
            return await self.settle(task, state.turn_id, terms.wait_s)
        except ReviewError as exc:
            raise TurnError(exc.code, exc.message, reason=exc.reason) from exc

    async def settle(self, task: ReviewTask, turn_id: str, wait_s: int) -> ReviewTask:
        """``task`` once approved; the refusal when it closed otherwise or is still open."""
        if not task.settled and wait_s > 0:
            task = await self._desk.wait(task.task_id, timeout_s=wait_s)
        if task.settled and task.status == "approved":
            return task
        if task.settled:
            raise refused_error(task)
        raise pending_error(task, turn_id)

    def held_answer(self, task: ReviewTask, stream: bool) -> UpstreamResult:
        """The upstream's answer the held turn of ``task`` recorded (blocking): what an approved
        response-stage task releases without a second upstream call."""
        for entry in self._ledger.entries_for_turn(task.turn_id):
            body = entry.event.body
            if entry.event.type == "upstream.returned" and isinstance(body.get("response"), str):
                raw = self._commitments.open(body["response"])
                if raw is None:
                    break  # erased: nothing can be released
                events: Sequence[bytes] = raw.split(b"\n") if stream else ()
                return UpstreamResult(
                    status=int(body["status"]),
                    body=b"" if stream else raw,
                    headers={},
                    elapsed_ms=0.0,
                    events=list(events),
                    stream_complete=bool(body.get("stream_complete", True)),
                )
        raise TurnError(
            410,
            f"Review task {task.task_id} approved an output of turn {task.turn_id}, but that"
            " answer is no longer stored (erased). Nothing was released; send a new request.",
            reason="REVIEWED_OUTPUT_GONE",
        )
