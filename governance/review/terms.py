"""What a policy decision's obligations say about a review, checked once, with safe defaults.

The obligations come from ``policies/custody/decision.rego`` (``review_obligations``):
``reviewer_group``, ``approvals_required``, ``review_deadline_s``, ``on_deadline`` (``reject``,
the default, or ``escalate`` with ``escalate_to``), ``reviewer_identity`` (how a release's
manifest names the reviewer) and ``review_wait_s`` (how long a Gemini caller's connection is held
waiting for the decision; 0 answers at once). A value of the wrong type or out of range is a
policy bug: it refuses to open the task (the turn fails closed) instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from governance.review.errors import ReviewError

IDENTITIES = ("name", "pseudonym", "commitment")
ON_DEADLINE = ("reject", "escalate")
MAX_APPROVALS = 20
MAX_DEADLINE_S = 30 * 86_400
MAX_WAIT_S = 3_600
DEFAULT_GROUP = "reviewers"
DEFAULT_DEADLINE_S = 86_400
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")

Identity = Literal["name", "pseudonym", "commitment"]


@dataclass(frozen=True)
class ReviewTerms:
    """Who decides, how many of them, by when, and what happens when nobody does."""

    reviewer_group: str = DEFAULT_GROUP
    approvals_required: int = 1
    deadline_s: int = DEFAULT_DEADLINE_S
    on_deadline: Literal["reject", "escalate"] = "reject"
    escalate_to: str | None = None
    reviewer_identity: Identity = "name"
    wait_s: int = 0

    @classmethod
    def from_obligations(cls, obligations: Mapping[str, Any]) -> ReviewTerms:
        """The terms in ``obligations``; absent ones take the defaults above."""
        group = obligations.get("reviewer_group", DEFAULT_GROUP)
        if not isinstance(group, str) or not GROUP_NAME.match(group):
            raise _bad("reviewer_group", group, "a group name (letters, digits, . _ : @ -)")
        approvals = _integer(obligations, "approvals_required", 1, 1, MAX_APPROVALS)
        deadline_s = _integer(
            obligations, "review_deadline_s", DEFAULT_DEADLINE_S, 1, MAX_DEADLINE_S
        )
        wait_s = _integer(obligations, "review_wait_s", 0, 0, MAX_WAIT_S)
        on_deadline = obligations.get("on_deadline", "reject")
        if on_deadline not in ON_DEADLINE:
            raise _bad("on_deadline", on_deadline, "'reject' or 'escalate'")
        escalate_to = obligations.get("escalate_to") or None
        if on_deadline == "escalate":
            if not isinstance(escalate_to, str) or not GROUP_NAME.match(escalate_to):
                raise _bad("escalate_to", escalate_to, "the group a late task escalates to")
            if escalate_to == group:
                raise _bad("escalate_to", escalate_to, "a group other than reviewer_group")
        else:
            escalate_to = None
        identity = obligations.get("reviewer_identity", "name")
        if identity not in IDENTITIES:
            raise _bad("reviewer_identity", identity, "'name', 'pseudonym' or 'commitment'")
        return cls(group, approvals, deadline_s, on_deadline, escalate_to, identity, wait_s)


def _integer(obligations: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = obligations.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(name, value, f"an integer from {low} to {high}")
    return value


def _bad(name: str, value: Any, expected: str) -> ReviewError:
    return ReviewError(
        500,
        f"The policy's review obligation {name}={value!r} is unusable: it must be {expected}."
        " The turn stays held and nothing was released; fix the policy (custody policy test).",
        "BAD_REVIEW_OBLIGATIONS",
    )
