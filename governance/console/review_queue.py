"""The review queue (``GET /console/reviews``): the tenant's tasks, filtered, the reader's own
groups first.

The same query as ``GET /api/v1/reviews`` (``ReviewDesk.queue`` with a ``QueueFilter``, the same
tenant walls: an operator reads every tenant or names one, anyone else only their own) and the
same recorded refusals for a bad filter. Filters: status (open by default, or all), group,
stage, requester, due before (a UTC date and time), and for an operator the tenant. Each
deadline is shown relative and absolute. ``refresh=30`` adds a ``<meta http-equiv=refresh>``:
the page stays a plain form that works without JavaScript.
"""

from __future__ import annotations

import calendar
import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from governance.api.deps import get_services
from governance.auth.keys import now_ms
from governance.console.nav import NAV, NavEntry
from governance.console.review_common import QUEUE_ROLES, absolute, own_groups, refuse, relative
from governance.console.web import ConsoleUser, render, require_console
from governance.review import QueueFilter, ReviewError, ReviewTask, desk_for
from governance.review.tasks import STAGES, STATUSES

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
NAV.append(NavEntry("/console/reviews", "Reviews", QUEUE_ROLES))
QUEUE_LIMIT = 200
REFRESH_S = 30
_reader = require_console(*QUEUE_ROLES)
_MINUTE = "%Y-%m-%dT%H:%M"


def _due_before_ms(value: str) -> int:
    """``YYYY-MM-DDTHH:MM`` (an HTML ``datetime-local`` field, read as UTC) -> ms."""
    for fmt in (_MINUTE, _MINUTE + ":%S"):
        try:
            return calendar.timegm(time.strptime(value, fmt)) * 1000
        except ValueError:
            continue
    raise ReviewError(
        400, "due before is a date and time, YYYY-MM-DDTHH:MM (UTC).", "BAD_REVIEW_QUERY"
    )


def _row(task: ReviewTask, mine: set[str], now: int) -> dict[str, Any]:
    return {
        "task": task,
        "mine": task.reviewer_group in mine,
        "due_relative": relative(task.deadline_ms, now),
        "due_absolute": absolute(task.deadline_ms),
        "overdue": task.is_open and task.deadline_ms <= now,
        "created": absolute(task.created_ms),
    }


@router.get("/reviews")
async def queue_page(
    request: Request,
    user: ConsoleUser = Depends(_reader),  # noqa: B008
    status: Annotated[str, Query()] = "open",
    group: Annotated[str, Query()] = "",
    stage: Annotated[str, Query()] = "",
    requester: Annotated[str, Query()] = "",
    due_before: Annotated[str, Query()] = "",
    tenant: Annotated[str, Query()] = "",
    refresh: Annotated[str, Query()] = "",
) -> Response:
    principal = user.principal
    err = None
    due_ms = None
    try:
        if status not in (*STATUSES, "open", "all"):
            raise ReviewError(
                400, f"status is one of open, all, {', '.join(STATUSES)}.", "BAD_REVIEW_QUERY"
            )
        if stage and stage not in STAGES:
            raise ReviewError(400, "stage is 'request' or 'response'.", "BAD_REVIEW_QUERY")
        if tenant and not principal.is_operator and tenant != principal.tenant:
            raise ReviewError(
                403,
                f"An account of tenant {principal.tenant!r} reads only that tenant's reviews.",
                "TENANT_SCOPE",
            )
        if due_before:
            due_ms = _due_before_ms(due_before)
    except ReviewError as exc:
        err = exc
    if err is not None:
        raise await refuse(request, user, "read", None, err)
    flt = QueueFilter(
        tenant=(tenant or None) if principal.is_operator else principal.tenant,
        status=None if status == "all" else status,
        group=group or None,
        stage=stage or None,
        requester=requester or None,
        due_before_ms=due_ms,
        limit=QUEUE_LIMIT,
    )
    services = get_services(request)
    tasks = await services.run_blocking(desk_for(services).queue, flt)
    mine = await services.run_blocking(own_groups, request, user)
    now = now_ms()
    rows = [_row(t, mine, now) for t in tasks]
    rows.sort(key=lambda r: not r["mine"])  # stable: each part stays soonest deadline first
    filters = {
        "status": status,
        "group": group,
        "stage": stage,
        "requester": requester,
        "due_before": due_before,
        "tenant": tenant,
    }
    return render(
        request,
        "reviews.html",
        user,
        title="Reviews",
        rows=rows,
        filters=filters,
        statuses=("open", "all", *STATUSES),
        stages=STAGES,
        mine=sorted(mine),
        refresh_s=REFRESH_S if refresh else 0,
        refresh_query=_query({**filters, "refresh": "" if refresh else "1"}),
        read_only=not principal.has_role("reviewer"),
        limit=QUEUE_LIMIT,
    )


def _query(params: dict[str, str]) -> str:
    return urlencode({k: v for k, v in params.items() if v})
