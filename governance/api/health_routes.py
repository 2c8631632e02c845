"""Liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz`` are open (load balancers have no key) and say nothing about any
tenant; ``/metrics`` is scoped to the reader's tenant (``governance.metrics.TenantView``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from governance.api.deps import get_services
from governance.api.tenant_scope import require_reader
from governance.auth.principal import Principal
from storage import policy_revisions

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers, the upstream is reachable and this replica decides with
    the active policy revision (several replicas: ``storage.policy_revisions``); 503 if not.

    Open to load balancers without a key, so it says nothing beyond ok / unreachable.
    """
    services = get_services(request)
    checks: dict[str, str] = {}
    try:
        await services.run_blocking(_ping_database, services)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc}"
    status = await services.upstream.get("/v1beta/models")
    checks["upstream"] = "ok" if 0 < status < 500 else f"unreachable (HTTP {status or 'none'})"
    if checks["database"] == "ok":
        try:
            same = await services.run_blocking(_on_active_policy, services)
            checks["policy"] = "ok" if same else "not the active revision of the replicas"
        except Exception as exc:
            checks["policy"] = f"unknown: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def _on_active_policy(services: object) -> bool:
    """This replica decides with the revision the replicas converge to (``policy_revisions``)."""
    found = policy_revisions.active(services.engine)  # type: ignore[attr-defined]
    return found is None or found.revision == services.policy.bundle_revision  # type: ignore[attr-defined]


def _ping_database(services: object) -> None:
    engine = services.read_engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/metrics")
async def metrics(
    request: Request,
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> Response:
    """Prometheus text exposition (a reader's key as Bearer token): an auditor gets their own
    tenant's series only; an operator gets every series, process-wide ones included."""
    view = get_services(request).metrics.tenant_view(
        None if principal.is_operator else principal.tenant
    )
    return Response(generate_latest(view), media_type=CONTENT_TYPE_LATEST)
