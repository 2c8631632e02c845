"""Evidence bundles over HTTP (auditor, own tenant; operator, any tenant named in the body).

``POST /api/v1/evidence/bundles`` writes a bundle (docs/ledger-format.md §12) into
``data_dir/evidence`` and answers its id; ``GET /api/v1/evidence/bundles/{id}`` downloads it.
Proofs are against the newest stored checkpoint: an auditor's export never signs one (as with
``/ledger/proof/file``), so entries newer than it are left out and the answer says up to which
size the bundle goes. A bundle of another tenant answers 404, as one that does not exist.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.tenant_scope import require_reader
from governance.auth.principal import Principal
from governance.evidence.export import ExportError, ExportResult, Selection
from governance.evidence.exporting import (
    NotYetWitnessed,
    checkpoint_for_export,
    export_to_file,
    keys_for,
    new_bundle_id,
)
from governance.evidence.layout import parse_disclosure
from governance.evidence.timestamp import TimestampError, TsaClient
from governance.services import Services
from storage.blobs import Commitments
from storage.private_files import make_private_dir

router = APIRouter(prefix="/api/v1/evidence", tags=["evidence"])
Reader = Annotated[Principal, Depends(require_reader)]
_BUNDLE_ID = re.compile(r"eb_[0-9a-f]{24}")
MAX_TIME_MS = 2**62


class BundleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, max_length=128)  # an operator's; others export their own
    session: str | None = Field(None, max_length=128)
    turn: str | None = Field(None, max_length=40)
    since_ms: int | None = Field(None, ge=0, le=MAX_TIME_MS)
    until_ms: int | None = Field(None, ge=0, le=MAX_TIME_MS)
    disclose: str = Field("none", max_length=1024)
    since_checkpoints: list[str] = Field(default_factory=list, max_length=64)


def _bad(message: str) -> GeminiError:
    return GeminiError(400, message, reason="BAD_EVIDENCE_REQUEST")


def evidence_dir(services: Services) -> Path:
    return make_private_dir(services.settings.data_dir / "evidence")


def _tenant(principal: Principal, body: BundleRequest) -> str:
    if principal.is_operator:
        if not body.tenant:
            raise _bad("An operator exports one tenant's evidence: name it in 'tenant'.")
        return body.tenant
    if body.tenant not in (None, principal.tenant):
        raise GeminiError(
            403,
            f"The key of {principal.actor!r} exports tenant {principal.tenant!r} only.",
            reason="TENANT_SCOPE",
        )
    return principal.tenant


def _export(
    services: Services, principal: Principal, sel: Selection, body: BundleRequest
) -> dict[str, Any]:
    disclose = parse_disclosure(body.disclose)
    checkpoint = checkpoint_for_export(services.settings, services.ledger, sign=False)
    bundle_id = new_bundle_id()
    folder = evidence_dir(services)
    result: ExportResult = export_to_file(
        folder / f"{bundle_id}.zip",
        bundle_id=bundle_id,
        ledger=services.ledger,
        commitments=Commitments(services.engine, services.blobs),
        keys=keys_for(services.settings, services.ledger, services.signer.anchors_pem),
        selection=sel,
        checkpoint=checkpoint,
        disclose=disclose,
        actor=principal.actor,
        since_checkpoints=body.since_checkpoints,
        timestamp=(
            TsaClient(services.settings.evidence_tsa_url).timestamp
            if services.settings.evidence_tsa_url
            else None
        ),
        via="api",
    )
    record = {
        "id": bundle_id,
        "tenant": sel.tenant,
        "actor": principal.actor,
        "created_ms": int(time.time() * 1000),
        "bundle": result.to_dict(),
    }
    (folder / f"{bundle_id}.json").write_text(json.dumps(record, sort_keys=True))
    return record


@router.post("/bundles")
async def create_bundle(request: Request, principal: Reader, body: BundleRequest) -> dict[str, Any]:
    """Export the evidence of the caller's tenant that ``body`` selects; the bundle's id."""
    services = get_services(request)
    sel = Selection(
        tenant=_tenant(principal, body),
        session=body.session,
        turn=body.turn,
        since_ms=body.since_ms,
        until_ms=body.until_ms,
    )
    try:
        parse_disclosure(body.disclose)
        record = await services.run_blocking(_export, services, principal, sel, body)
    except TimestampError as exc:
        raise GeminiError(502, str(exc), reason="TSA_FAILED") from exc
    except NotYetWitnessed as exc:
        response = GeminiError(503, str(exc), reason="NOT_YET_WITNESSED")
        raise response from exc
    except ExportError as exc:
        if str(exc).startswith("no entries"):
            raise GeminiError(404, str(exc), reason="NO_EVIDENCE") from exc
        raise _bad(str(exc)) from exc
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    return {
        **record,
        "download": f"/api/v1/evidence/bundles/{record['id']}",
        "verify": "custody verify-bundle BUNDLE.zip --log-key "
        f"'{services.ledger.signer.verifier_key()}'",
    }


@router.get("/bundles/{bundle_id}")
async def download_bundle(request: Request, principal: Reader, bundle_id: str) -> FileResponse:
    """The bundle's zip, to its tenant's readers (and operators)."""
    services = get_services(request)
    missing = GeminiError(
        404,
        f"There is no evidence bundle {bundle_id!r} of tenant {principal.tenant!r}: export one"
        " with POST /api/v1/evidence/bundles.",
        reason="NO_SUCH_BUNDLE",
    )
    if not _BUNDLE_ID.fullmatch(bundle_id):
        raise missing
    folder = evidence_dir(services)
    try:
        record = json.loads((folder / f"{bundle_id}.json").read_text())
    except (OSError, ValueError) as exc:
        raise missing from exc
    if not principal.is_operator and record.get("tenant") != principal.tenant:
        raise missing
    return FileResponse(
        folder / f"{bundle_id}.zip",
        media_type="application/zip",
        filename=f"{bundle_id}.zip",
    )
