"""The native review API: the queue, a task, claiming and deciding it, a turn's status, reviewer
groups and review webhooks.

Who may do what: reviewers and auditors of a tenant read its queue (an operator reads every
tenant's; editors do not see it); only a reviewer (admins hold the role) who is a member of the
task's group and did not request the turn claims or decides (``governance.review.desk``). A
task of another tenant answers 404, as if it did not exist. ``GET /api/v1/turns/{id}`` is open to
the turn's requester, the tenant's reviewers and auditors, and the operator. Groups and webhooks
are managed by the tenant's admin (or the operator).

Every refusal of an authenticated caller on these routes, the role check included, is a
``review.refused`` ledger event before the 4xx answer (Gemini's error envelope, like every
Custody route).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from governance.api.deps import authenticate, get_services
from governance.api.errors import GeminiError
from governance.api.tenant_scope import sees_tenant
from governance.auth.principal import Principal
from governance.review import (
    QueueFilter,
    ReviewDesk,
    ReviewError,
    ReviewGroups,
    ReviewTask,
    WebhookRegistry,
    desk_for,
)
from governance.review.tasks import STAGES, STATUSES, not_found
from storage.ledger.leaf import decode_leaf

router = APIRouter(prefix="/api/v1", tags=["reviews"])
MAX_BODY_BYTES = 64 * 1024
MAX_QUEUE = 500


async def _refuse(
    request: Request, principal: Principal, action: str, task: str | None, err: ReviewError
) -> GeminiError:
    """Record ``err`` as ``review.refused`` and turn it into the answer."""
    services = get_services(request)
    await services.run_blocking(desk_for(services).record_refusal, principal, action, task, err)
    return GeminiError(err.code, err.message, reason=err.reason)


def _role_check(action: str, *roles: str) -> Any:
    """A dependency admitting holders of any of ``roles``; a refusal is recorded."""

    async def _check(
        request: Request, principal: Annotated[Principal, Depends(authenticate)]
    ) -> Principal:
        if any(principal.has_role(r) for r in roles):
            return principal
        err = ReviewError(
            403,
            f"This route needs the {' or '.join(repr(r) for r in roles)} role; the key of"
            f" {principal.actor!r} has {', '.join(sorted(principal.roles))}.",
            "ROLE_REQUIRED",
        )
        raise await _refuse(request, principal, action, request.path_params.get("task_id"), err)

    return _check


QueueReader = Annotated[Principal, Depends(_role_check("read", "reviewer", "auditor", "operator"))]
Reviewer = Annotated[Principal, Depends(_role_check("decide", "reviewer"))]
TurnReader = Annotated[
    Principal, Depends(_role_check("turn", "editor", "reviewer", "auditor", "operator"))
]
Manager = Annotated[Principal, Depends(_role_check("manage", "admin", "operator"))]


async def _body(
    request: Request,
    principal: Principal,
    action: str,
    model: type[BaseModel],
    task: str | None = None,
) -> Any:
    raw = await request.body()
    try:
        if len(raw) > MAX_BODY_BYTES:
            raise ValueError(f"the body is over {MAX_BODY_BYTES} bytes")
        return model.model_validate(json.loads(raw or b"{}"))
    except (ValueError, ValidationError) as exc:
        detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        err = ReviewError(400, f"Invalid request body: {detail}.", "BAD_REVIEW_REQUEST")
        raise await _refuse(request, principal, action, task, err) from exc


async def _visible_task(
    request: Request, principal: Principal, task_id: str, action: str
) -> ReviewTask:
    services = get_services(request)
    task: ReviewTask | None = await services.run_blocking(desk_for(services).get, task_id)
    if task is None or not sees_tenant(principal, task.tenant):
        raise await _refuse(request, principal, action, task_id, not_found(task_id))
    return task


# --- the queue and a task -------------------------------------------------------------------------


@router.get("/reviews")
async def list_reviews(
    request: Request,
    principal: QueueReader,
    status: Annotated[str, Query()] = "open",
    group: Annotated[str | None, Query()] = None,
    stage: Annotated[str | None, Query()] = None,
    requester: Annotated[str | None, Query()] = None,
    due_before_ms: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    tenant: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_QUEUE)] = 100,
) -> dict[str, Any]:
    """The queue: open tasks by default (``status=all`` for every task), soonest deadline first."""
    err = None
    if status not in (*STATUSES, "open", "all"):
        err = ReviewError(
            400, f"status is one of open, all, {', '.join(STATUSES)}.", "BAD_REVIEW_QUERY"
        )
    elif stage is not None and stage not in STAGES:
        err = ReviewError(400, "stage is 'request' or 'response'.", "BAD_REVIEW_QUERY")
    elif tenant is not None and not principal.is_operator and tenant != principal.tenant:
        err = _scope_error(principal)
    if err is not None:
        raise await _refuse(request, principal, "read", None, err)
    scope = tenant if principal.is_operator else principal.tenant
    flt = QueueFilter(
        tenant=scope,
        status=None if status == "all" else status,
        group=group,
        stage=stage,
        requester=requester,
        due_before_ms=due_before_ms,
        limit=limit,
    )
    services = get_services(request)
    tasks = await services.run_blocking(desk_for(services).queue, flt)
    return {"reviews": [t.to_json() for t in tasks]}


@router.get("/reviews/{task_id}")
async def get_review(request: Request, principal: QueueReader, task_id: str) -> dict[str, Any]:
    """One task: what it shows, its terms, its state and every decision taken on it."""
    task = await _visible_task(request, principal, task_id, "read")
    return {"review": task.to_json(with_decisions=True)}


class ClaimBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minutes: int = Field(default=15, ge=1, le=240)


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: str
    comment: str = ""
    shown_digest: str


async def _act(
    request: Request,
    principal: Principal,
    action: str,
    task_id: str,
    fn: Any,
    *args: Any,
    **kwargs: Any,
) -> ReviewTask:
    services = get_services(request)
    try:
        result: ReviewTask = await services.run_blocking(fn, *args, **kwargs)
    except ReviewError as err:
        raise await _refuse(request, principal, action, task_id, err) from err
    return result


@router.post("/reviews/{task_id}/claim")
async def claim_review(request: Request, principal: Reviewer, task_id: str) -> dict[str, Any]:
    """Hold the task for the caller (``{minutes?}``, default 15) so nobody duplicates the work."""
    body = await _body(request, principal, "claim", ClaimBody, task_id)
    await _visible_task(request, principal, task_id, "claim")
    desk: ReviewDesk = desk_for(get_services(request))
    task = await _act(
        request,
        principal,
        "claim",
        task_id,
        desk.claim,
        task_id,
        principal,
        for_ms=body.minutes * 60_000,
    )
    return {"review": task.to_json(with_decisions=True)}


@router.post("/reviews/{task_id}/decision")
async def decide_review(request: Request, principal: Reviewer, task_id: str) -> dict[str, Any]:
    """``{decision: approve | reject | request_changes, comment, shown_digest}``."""
    body = await _body(request, principal, "decide", DecisionBody, task_id)
    await _visible_task(request, principal, task_id, "decide")
    desk = desk_for(get_services(request))
    task = await _act(
        request,
        principal,
        "decide",
        task_id,
        desk.decide,
        task_id,
        principal,
        body.decision,
        body.comment,
        body.shown_digest,
    )
    return {"review": task.to_json(with_decisions=True)}


# --- a turn's status ------------------------------------------------------------------------------


def turn_status(events: list[dict[str, Any]], tasks: list[ReviewTask]) -> str:
    """``released``, ``failed``, ``interrupted``, ``held`` (a task open), ``approved`` /
    ``rejected`` / ``changes_requested`` / ``expired`` (the last task's outcome, not yet
    released), or ``running``."""
    types = [e["type"] for e in events]
    for final, status in (("turn.released", "released"), ("turn.interrupted", "interrupted")):
        if final in types:
            return status
    if tasks:
        last = tasks[-1]
        return "held" if last.is_open else last.status
    return "failed" if "turn.failed" in types else "running"


@router.get("/turns/{turn_id}")
async def get_turn(request: Request, principal: TurnReader, turn_id: str) -> dict[str, Any]:
    """A turn's status from its ledger events and review tasks, with the decision trail."""
    services = get_services(request)
    entries = await services.run_blocking(services.ledger.entries_for_turn, turn_id)
    tasks = await services.run_blocking(desk_for(services).tasks_for_turn, turn_id)
    events = []
    for entry in entries:
        leaf = decode_leaf(entry.leaf)
        events.append(
            {
                "index": entry.index,
                "type": leaf["type"],
                "time_ms": leaf["time_ms"],
                "tenant": leaf["tenant"],
                "actor": leaf["actor"],
            }
        )
    tenant = events[0]["tenant"] if events else (tasks[0].tenant if tasks else None)
    requester = next((e["actor"] for e in events if e["type"] == "turn.received"), None)
    requester = requester or (tasks[0].requester if tasks else None)
    may_read = (
        tenant is not None
        and sees_tenant(principal, tenant)
        and (
            principal.is_operator
            or principal.has_role("reviewer")
            or principal.has_role("auditor")
            or principal.actor == requester
        )
    )
    if not may_read:
        err = ReviewError(
            404,
            f"There is no turn {turn_id!r} of yours: the id is in the x-custody-turn header of"
            " the answer to your call.",
            "TURN_NOT_FOUND",
        )
        raise await _refuse(request, principal, "turn", None, err)
    return {
        "turn": turn_id,
        "tenant": tenant,
        "requester": requester,
        "status": turn_status(events, tasks),
        "events": [{k: e[k] for k in ("index", "type", "time_ms", "actor")} for e in events],
        "reviews": [t.to_json(with_decisions=True) for t in tasks],
    }


# --- reviewer groups ------------------------------------------------------------------------------


class MemberBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str = Field(min_length=1, max_length=256)
    tenant: str | None = None  # an operator names the tenant; an admin's is its own


def _managed_tenant(principal: Principal, tenant: str | None) -> str | None:
    """The tenant an admin or operator acts on; None when an admin names another tenant."""
    if principal.is_operator:
        return tenant or principal.tenant
    return principal.tenant if tenant in (None, principal.tenant) else None


def _scope_error(principal: Principal) -> ReviewError:
    return ReviewError(
        403,
        f"A key of tenant {principal.tenant!r} reads and manages only that tenant's reviews.",
        "TENANT_SCOPE",
    )


@router.get("/review-groups")
async def list_groups(
    request: Request, principal: Manager, tenant: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """Every reviewer group member of the tenant (an operator: of every tenant, or ``tenant``)."""
    if not principal.is_operator and tenant not in (None, principal.tenant):
        raise await _refuse(request, principal, "groups", None, _scope_error(principal))
    scope = tenant if principal.is_operator else principal.tenant
    services = get_services(request)
    groups = ReviewGroups(services.engine, services.ledger)
    members = await services.run_blocking(groups.members, scope)
    return {"members": [m.to_json() for m in members]}


@router.post("/review-groups/{group}/members")
async def add_member(request: Request, principal: Manager, group: str) -> dict[str, Any]:
    """``{actor, tenant?}``: ``actor`` reviews for ``group`` from now on."""
    body = await _body(request, principal, "groups", MemberBody)
    tenant = _managed_tenant(principal, body.tenant)
    if tenant is None:
        raise await _refuse(request, principal, "groups", None, _scope_error(principal))
    services = get_services(request)
    groups = ReviewGroups(services.engine, services.ledger)
    try:
        member = await services.run_blocking(
            groups.add, tenant=tenant, group=group, actor=body.actor, by=principal.actor
        )
    except ReviewError as err:
        raise await _refuse(request, principal, "groups", None, err) from err
    return {"member": member.to_json()}


@router.delete("/review-groups/{group}/members/{actor}")
async def remove_member(
    request: Request,
    principal: Manager,
    group: str,
    actor: str,
    tenant: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """``actor`` no longer reviews for ``group`` (decisions already taken stand)."""
    scope = _managed_tenant(principal, tenant)
    if scope is None:
        raise await _refuse(request, principal, "groups", None, _scope_error(principal))
    services = get_services(request)
    groups = ReviewGroups(services.engine, services.ledger)
    try:
        await services.run_blocking(
            groups.remove, tenant=scope, group=group, actor=actor, by=principal.actor
        )
    except ReviewError as err:
        raise await _refuse(request, principal, "groups", None, err) from err
    return {"removed": {"tenant": scope, "group": group, "actor": actor}}


# --- webhooks -------------------------------------------------------------------------------------


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    tenant: str | None = None


@router.get("/webhooks")
async def list_webhooks(
    request: Request, principal: Manager, tenant: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """The tenant's review webhooks (never their secrets)."""
    if not principal.is_operator and tenant not in (None, principal.tenant):
        raise await _refuse(request, principal, "webhooks", None, _scope_error(principal))
    scope = tenant if principal.is_operator else principal.tenant
    services = get_services(request)
    hooks = await services.run_blocking(
        WebhookRegistry(services.engine, services.ledger).endpoints, scope
    )
    return {"webhooks": [h.to_json() for h in hooks]}


@router.post("/webhooks")
async def create_webhook(request: Request, principal: Manager) -> dict[str, Any]:
    """``{url, tenant?}`` -> the webhook and its signing secret, shown this once."""
    body = await _body(request, principal, "webhooks", WebhookBody)
    tenant = _managed_tenant(principal, body.tenant)
    if tenant is None:
        raise await _refuse(request, principal, "webhooks", None, _scope_error(principal))
    services = get_services(request)
    registry = WebhookRegistry(services.engine, services.ledger)
    try:
        hook, secret = await services.run_blocking(
            registry.register,
            tenant=tenant,
            url=body.url,
            by=principal.actor,
            allowed_networks=services.webhook_networks,
        )
    except ReviewError as err:
        raise await _refuse(request, principal, "webhooks", None, err) from err
    return {"webhook": hook.to_json(), "secret": secret}


@router.delete("/webhooks/{webhook_id}")
async def delete_webhook(request: Request, principal: Manager, webhook_id: str) -> dict[str, Any]:
    """Stop delivering to a webhook; its pending deliveries are dropped (recorded as failed)."""
    services = get_services(request)
    registry = WebhookRegistry(services.engine, services.ledger)
    scope = None if principal.is_operator else principal.tenant
    try:
        hook = await services.run_blocking(
            registry.remove, webhook_id, tenant=scope, by=principal.actor
        )
    except ReviewError as err:
        raise await _refuse(request, principal, "webhooks", None, err) from err
    return {"removed": hook.to_json()}
