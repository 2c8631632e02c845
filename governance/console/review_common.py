"""What the review pages share: who may read and decide, refusals recorded as the native API
records them, the visible task, the reader's own groups, and deadlines in words.

A refusal on a review page is the ``ReviewError`` the desk (or the check here) raised, recorded
with ``ReviewDesk.record_refusal`` as ``review.refused`` — the event ``/api/v1/reviews`` writes
for the same refusal — and shown as the console's HTML refusal page with the same status.
"""

from __future__ import annotations

import time

from fastapi import Request

from governance.api.deps import get_services
from governance.api.tenant_scope import sees_tenant
from governance.console.nav import CONSOLE_ROLES
from governance.console.web import ConsoleRefusal, ConsoleUser
from governance.review import ReviewError, ReviewGroups, ReviewTask, desk_for
from governance.review.tasks import not_found

# Who reads the queue and a task: the native API's readers (reviewers, auditors, operators;
# admins hold the reviewer role). Editors never.
QUEUE_ROLES = CONSOLE_ROLES
# Who claims and decides: reviewers (admins hold the role); the desk checks the group and the
# separation of duties.
DECIDER_ROLE = "reviewer"


async def refuse(
    request: Request, user: ConsoleUser, action: str, task_id: str | None, err: ReviewError
) -> ConsoleRefusal:
    """Record ``err`` as ``review.refused`` and turn it into the console's refusal page."""
    services = get_services(request)
    await services.run_blocking(
        desk_for(services).record_refusal, user.principal, action, task_id, err
    )
    return ConsoleRefusal(err.code, err.message, err.reason, user=user, recorded=True)


async def require_decider(request: Request, user: ConsoleUser, action: str, task_id: str) -> None:
    """Refuse (recorded) a person without the reviewer role: auditors read, never decide."""
    principal = user.principal
    if principal.has_role(DECIDER_ROLE):
        return
    err = ReviewError(
        403,
        f"Only reviewers claim and decide tasks; your account ({principal.actor}) has"
        f" {', '.join(sorted(principal.roles))}.",
        "ROLE_REQUIRED",
    )
    raise await refuse(request, user, action, task_id, err)


async def visible_task(
    request: Request, user: ConsoleUser, task_id: str, action: str
) -> ReviewTask:
    """The task when the person's tenant walls admit it; otherwise the same recorded 404 as for
    a task that does not exist."""
    services = get_services(request)
    task: ReviewTask | None = await services.run_blocking(desk_for(services).get, task_id)
    if task is None or not sees_tenant(user.principal, task.tenant):
        raise await refuse(request, user, action, task_id[:64], not_found(task_id[:64]))
    return task


def own_groups(request: Request, user: ConsoleUser) -> set[str]:
    """The groups the person reviews for in their tenant (the membership the desk checks)."""
    services = get_services(request)
    principal = user.principal
    members = ReviewGroups(services.engine, services.ledger).members(principal.tenant)
    return {m.group for m in members if m.actor == principal.actor}


def absolute(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def relative(ms: int, now_ms: int) -> str:
    """``in 14 min`` / ``in 1 h 59 min`` / ``3 d 2 h ago``: how far a time is from now, in its
    two largest units."""
    delta = (ms - now_ms) // 1000
    span = abs(delta)
    units = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))
    parts: list[str] = []
    for unit, seconds in units:
        if span >= seconds or (unit == "s" and not parts):
            parts.append(f"{span // seconds} {unit}")
            span %= seconds
        elif parts:
            break
        if len(parts) == 2:
            break
    amount = " ".join(parts)
    return f"in {amount}" if delta >= 0 else f"{amount} ago"
