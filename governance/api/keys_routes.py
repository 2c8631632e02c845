"""The key admin API: list, create, revoke and rotate API keys (``/api/v1/keys``).

Tenant-scoped: a tenant's admin sees and manages only its own tenant's keys (another tenant's
key answers 404, as if it did not exist), may give only tenant roles and never touches a key
holding ``operator``; an operator key manages every tenant. Each step is a ledger event
(``governance.auth.lifecycle``). Errors use Gemini's envelope, like every Custody route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from governance.api.deps import authenticate, get_services
from governance.api.errors import GeminiError
from governance.auth.keys import KeyError_
from governance.auth.lifecycle import (
    KeyInfo,
    KeyLifecycle,
    KeyLifecycleError,
    Operator,
    parse_expiry_ms,
)
from governance.auth.principal import ROLES, TENANT_ROLES, Principal

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


def require_manager(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Admins (of their own tenant) and operators (of any tenant)."""
    if principal.is_operator or "admin" in principal.roles:
        return principal
    raise GeminiError(
        403,
        f"This route needs an admin key of the tenant (or an operator key); the key of"
        f" {principal.actor!r} has {', '.join(sorted(principal.roles))}.",
        reason="ROLE_REQUIRED",
    )


Manager = Annotated[Principal, Depends(require_manager)]


def may_manage(principal: Principal, tenant: str) -> bool:
    """Whether ``principal`` may act on ``tenant``'s keys or content."""
    return principal.is_operator or principal.tenant == tenant


def operator_of(principal: Principal) -> Operator:
    return Operator(
        actor=principal.actor, via="api", key_id=principal.key_id, tenant=principal.tenant
    )


def _error(exc: KeyLifecycleError | KeyError_) -> GeminiError:
    if isinstance(exc, KeyError_):
        return GeminiError(400, f"{exc}.", reason="BAD_KEY_REQUEST")
    return GeminiError(exc.code, exc.message, reason=exc.reason)


def _lifecycle(request: Request) -> KeyLifecycle:
    services = get_services(request)
    return KeyLifecycle(services.engine, services.ledger)


async def _call(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await get_services(request).run_blocking(fn, *args, **kwargs)
    except (KeyLifecycleError, KeyError_) as exc:
        raise _error(exc) from exc


async def _managed_key(request: Request, principal: Principal, key_id: str) -> KeyInfo:
    info: KeyInfo | None = await get_services(request).run_blocking(_lifecycle(request).get, key_id)
    if info is None or not may_manage(principal, info.tenant):
        raise GeminiError(
            404,
            f"There is no key {key_id!r} in tenant {principal.tenant!r}. List your keys with"
            " GET /api/v1/keys.",
            reason="KEY_NOT_FOUND",
        )
    if "operator" in info.roles and not principal.is_operator:
        raise GeminiError(
            403,
            f"Key {key_id} is an operator key: only an operator may revoke or rotate it.",
            reason="OPERATOR_KEY",
        )
    return info


class CreateKey(BaseModel):
    roles: list[str] = Field(min_length=1)
    tenant: str | None = None  # default: the caller's tenant
    actor: str | None = None  # default: <first role>@<tenant>
    label: str = ""
    expires_in: str | None = None  # a duration: 90s, 15m, 12h, 30d, 2w
    expires: str | None = None  # ISO 8601


class RevokeKey(BaseModel):
    reason: str = ""


class RotateKey(BaseModel):
    grace_seconds: int = Field(default=0, ge=0)


@router.get("")
async def list_keys(
    request: Request, principal: Manager, tenant: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """The keys of the caller's tenant (an operator: of every tenant, or of ``tenant``)."""
    if not principal.is_operator:
        if tenant not in (None, principal.tenant):
            raise GeminiError(
                403,
                f"An admin of tenant {principal.tenant!r} may list only that tenant's keys.",
                reason="TENANT_SCOPE",
            )
        tenant = principal.tenant
    keys = await get_services(request).run_blocking(_lifecycle(request).list_keys, tenant=tenant)
    return {"keys": [k.to_json() for k in keys]}


@router.post("")
async def create_key(request: Request, principal: Manager, body: CreateKey) -> dict[str, Any]:
    """Make a key; the response holds the full key, which is never shown again."""
    tenant = body.tenant or principal.tenant
    if not may_manage(principal, tenant):
        raise GeminiError(
            403,
            f"An admin of tenant {principal.tenant!r} may create keys only for that tenant.",
            reason="TENANT_SCOPE",
        )
    unknown = [r for r in body.roles if r not in ROLES]
    if unknown:
        raise GeminiError(
            400,
            f"Unknown role(s) {', '.join(unknown)}: choose from {', '.join(ROLES)}.",
            reason="BAD_KEY_REQUEST",
        )
    if not principal.is_operator and any(r not in TENANT_ROLES for r in body.roles):
        raise GeminiError(
            403,
            f"A tenant admin may give only the roles {', '.join(TENANT_ROLES)}; operator keys"
            " are made by an operator (or `custody keys create --role operator`).",
            reason="ROLE_NOT_GRANTABLE",
        )
    try:
        expires_ms = parse_expiry_ms(expires_in=body.expires_in, expires=body.expires)
    except KeyLifecycleError as exc:
        raise _error(exc) from exc
    made = await _call(
        request,
        _lifecycle(request).create,
        tenant=tenant,
        actor=body.actor or f"{body.roles[0]}@{tenant}",
        roles=body.roles,
        label=body.label,
        expires_ms=expires_ms,
        by=operator_of(principal),
    )
    return {"key": made.key, "info": made.info.to_json()}


@router.post("/{key_id}/revoke")
async def revoke_key(
    request: Request, principal: Manager, key_id: str, body: RevokeKey | None = None
) -> dict[str, Any]:
    """Revoke a key now: every process refuses it from its next request."""
    await _managed_key(request, principal, key_id)
    info = await _call(
        request,
        _lifecycle(request).revoke,
        key_id,
        by=operator_of(principal),
        reason=(body or RevokeKey()).reason,
    )
    return {"info": info.to_json()}


@router.post("/{key_id}/rotate")
async def rotate_key(
    request: Request, principal: Manager, key_id: str, body: RotateKey | None = None
) -> dict[str, Any]:
    """A replacement key (returned once); the old one is revoked after ``grace_seconds``."""
    await _managed_key(request, principal, key_id)
    made = await _call(
        request,
        _lifecycle(request).rotate,
        key_id,
        by=operator_of(principal),
        grace_ms=(body or RotateKey()).grace_seconds * 1000,
    )
    return {"key": made.key, "info": made.info.to_json(), "rotated_from": key_id}
