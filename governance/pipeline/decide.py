"""Stage 2 and 4, decide: the policy's two gates, before the upstream call and before release.

Each gate is one plain function the orchestrator runs off the event loop (facts read every input
image's structure, the response facts read output headers with PIL, Rego evaluates): the
orchestrator calls ``decide_request`` and ``decide_response`` as explicit steps, so a later
stage (a human review) can stand between a gate and what follows it.

A gate's answer is a ``GateVerdict``: pass, deny (403 ``POLICY_DENIED``, or the policy's own
``status_code`` obligation: 429 ``RATE_LIMITED``) or hold for review, which the review stage
(``review_gate``) turns into a wait for reviewers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from governance.auth.principal import Principal
from governance.ledger_vocabulary import PolicyDecided, ReviewRequested
from governance.pipeline.errors import TurnError
from governance.pipeline.parse import ParsedRequest
from governance.pipeline.policy_facts import request_facts, response_facts
from governance.pipeline.response import ResponseSummary
from governance.pipeline.turn_types import TurnRequest
from governance.policy.decision import Decision, RequestFacts
from governance.policy.service import PolicyService

log = logging.getLogger("custody")
_REASON = re.compile(r"[A-Z][A-Z0-9_]{2,63}")


class PolicyRefusal(TurnError):
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

    @property
    def held(self) -> bool:
        return self.reason == "HELD_FOR_REVIEW"

    def log(self, principal: Principal) -> None:
        """Log the refusal for operators: who, which decision, why (never the prompt)."""
        log.warning(
            "turn %s %s at %s: tenant=%s actor=%s decision=%s reasons=%s",
            self.turn_id,
            "held for review" if self.held else "denied",
            self.stage,
            principal.tenant,
            principal.actor,
            self.decision.decision_id,
            "; ".join(self.decision.reasons),
        )


@dataclass(frozen=True)
class GateVerdict:
    """What a gate decided: its ledger body, and the refusal when it did not pass.

    ``review`` is the ``review.requested`` body when the gate holds the turn."""

    decided: PolicyDecided
    refusal: PolicyRefusal | None = None
    review: ReviewRequested | None = None


class PolicyGates:
    """The request gate and the response gate, over one policy service."""

    def __init__(self, policy: PolicyService) -> None:
        self._policy = policy

    def request_facts(
        self, principal: Principal, request: TurnRequest, parsed: ParsedRequest
    ) -> RequestFacts:
        return request_facts(principal, request, parsed)

    def decide_request(self, facts: RequestFacts) -> Decision:
        """The request decision; it reserves the turn's rate-limit place unless it denies."""
        return self._policy.decide_request(facts)

    def decide_response(self, facts: RequestFacts, summary: ResponseSummary) -> Decision:
        return self._policy.decide_response(facts, response_facts(summary))

    def give_back_reservation(self, decision: Decision) -> None:
        """The turn releases nothing: its rate-limit place goes back (idempotent)."""
        self._policy.release_reservation(decision.decision_id)

    def settle_reservation(self, decision: Decision) -> None:
        """The turn is over and keeps its rate-limit place: nothing is kept to give it back."""
        self._policy.settle_reservation(decision.decision_id)


def request_verdict(turn_id: str, decision: Decision, input_ref: str) -> GateVerdict:
    """The request gate's verdict on ``decision``."""
    decided = decided_body(decision, "request", input_ref)
    if decision.outcome == "deny":
        return GateVerdict(decided, _denied(decision, "request"))
    if decision.outcome == "review":
        review: ReviewRequested = {"stage": "request", "reasons": list(decision.reasons)}
        return GateVerdict(decided, _held(turn_id, decision, "request"), review)
    return GateVerdict(decided)


def response_verdict(
    turn_id: str, request_decision: Decision, decision: Decision, input_ref: str
) -> GateVerdict:
    """The response gate's verdict: ``decision`` on the answer, or a hold the request decision
    asked for (``review_output``)."""
    decided = decided_body(decision, "response", input_ref)
    if decision.outcome == "deny":
        return GateVerdict(decided, _denied(decision, "response"))
    if decision.outcome in ("review", "review_output") or request_decision.outcome == (
        "review_output"
    ):
        held = decision if decision.outcome != "allow" else request_decision
        review: ReviewRequested = {"stage": "response", "reasons": list(held.reasons)}
        return GateVerdict(decided, _held(turn_id, held, "response"), review)
    return GateVerdict(decided)


def decided_body(decision: Decision, stage: str, input_ref: str) -> PolicyDecided:
    """The ``policy.decided`` body: the decision's record, its stage and the commitment to its
    full input (the masked input stays out of a turn's leaf)."""
    body = decision.record()
    body["stage"] = stage
    body["input"] = input_ref
    return body  # type: ignore[return-value]


def _denied(decision: Decision, stage: str) -> PolicyRefusal:
    code = int(decision.obligations.get("status_code", 403) or 403)
    named = decision.obligations.get("error_reason")
    if isinstance(named, str) and _REASON.fullmatch(named):
        reason = named  # the policy names the caller's error (e.g. URL_INPUT_DENIED)
    else:
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
        + f". Nothing was released: a reviewer must approve it (turn {turn_id}).",
        reason="HELD_FOR_REVIEW",
        decision=decision,
        stage=stage,
    )
