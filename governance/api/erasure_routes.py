"""``POST /api/v1/erasures``: erase content, recorded in the ledger before it is destroyed.

An admin may erase content only its own tenant's records refer to (content another tenant also
refers to needs an operator); content of another tenant answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, model_validator

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.keys_routes import Manager, operator_of
from governance.auth.principal import Principal
from governance.erasure import ContentEraser, ErasureError, ErasureTarget

router = APIRouter(prefix="/api/v1", tags=["erasure"])


class EraseContent(BaseModel):
    commitment: str | None = None
    digest: str | None = None
    reason: str

    @model_validator(mode="after")
    def _one_target(self) -> EraseContent:
        if bool(self.commitment) == bool(self.digest):
            raise ValueError("give exactly one of 'commitment' or 'digest'")
        return self


def _eraser(request: Request) -> ContentEraser:
    from storage.blobs import Commitments

    services = get_services(request)
    return ContentEraser(
        services.engine, services.ledger, Commitments(services.engine, services.blobs)
    )


def _not_yours(principal: Principal) -> ErasureError:
    # The same answer whether the content is missing or another tenant's: no existence leak.
    return ErasureError(
        404,
        f"Tenant {principal.tenant!r} holds no such content: check the digest or commitment"
        " against your tenant's ledger entries.",
        "CONTENT_NOT_FOUND",
    )


@router.post("/erasures")
async def erase(request: Request, principal: Manager, body: EraseContent) -> dict[str, Any]:
    """Erase one blob: its bytes are destroyed and the salts of its commitments emptied."""
    services = get_services(request)
    eraser = _eraser(request)
    try:
        try:
            target: ErasureTarget = await services.run_blocking(
                eraser.find, body.commitment or body.digest or ""
            )
        except ErasureError as exc:
            if exc.code == 404 and not principal.is_operator:
                raise _not_yours(principal) from exc
            raise
        if not principal.is_operator:
            if principal.tenant not in target.tenants:
                raise _not_yours(principal)
            if len(target.tenants) > 1:
                raise ErasureError(
                    403,
                    "Other tenants' records also refer to this content: an operator must erase"
                    " it (`custody erase` or an operator key).",
                    "CONTENT_SHARED",
                )
        done = await services.run_blocking(
            eraser.erase, target, reason=body.reason, by=operator_of(principal)
        )
    except ErasureError as exc:
        raise GeminiError(exc.code, exc.message, reason=exc.reason) from exc
    return {"erased": done.to_json()}
