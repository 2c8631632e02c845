"""Evidence bundles over HTTP (auditor, own tenant; operator, any tenant named in the body).

``POST /api/v1/evidence/bundles`` writes a bundle (docs/ledger-format.md §12) into
``data_dir/evidence`` and answers its id; ``GET /api/v1/evidence/bundles/{id}`` downloads it.
Proofs are against the newest stored checkpoint: an auditor's export never signs one (as with
``/ledger/proof/file``), so entries newer than it are left out and the answer says up to which
size the bundle goes. A bundle of another tenant answers 404, as one that does not exist.
A refused export (bad body, selection or disclosure; another tenant; nothing selected) is
recorded as ``request.refused``, like every refusal of a known caller.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.tenant_scope import require_reader
from governance.auth.principal import Principal
from governance.evidence.export import (
    ExportError,
    ExportResult,
    Selection,
    time_window,
)
from governance.evidence.exporting import (
    NotYetWitnessed,
    checkpoint_for_export,
    export_to_file,
    keys_for,
    new_bundle_id,
)
from governance.evidence.layout import parse_disclosure
from governance.evidence.timestamp import TimestampError, TsaClient
from governance.pipeline.errors import TurnError
from governance.services import Services
from storage.blobs import Commitments
from storage.private_files import make_private_dir

router = APIRouter(prefix="/api/v1/evidence", tags=["evidence"])
Reader = Annotated[Principal, Depends(require_reader)]
_BUNDLE_ID = re.compile(r"eb_[0-9a-f]{24}")
Moment = StrictInt | Annotated[str, Field(max_length=64)]  # ms since 1970, or ISO 8601


class BundleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, max_length=128)  # an operator's; others export their own
    session: str | None = Field(None, max_length=128)
    turn: str | None = Field(None, max_length=40)
    since: Moment | None = None  # entries at or after (``custody export --since``)
    until: Moment | None = None  # entries before (``--until``)
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


def export_for(
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


async def make_bundle(
    services: Services, principal: Principal, body: BundleRequest
) -> dict[str, Any]:
    """Export what ``body`` selects for ``principal``; its record. Refusals are GeminiErrors:
    400 (bad selection or disclosure), 403 (another tenant), 404 (nothing matches), 502 (the
    TSA failed), 503 (no checkpoint cosigned by the witness quorum yet)."""
    try:
        since_ms, until_ms = time_window(body.since, body.until)
        parse_disclosure(body.disclose)
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    sel = Selection(
        tenant=_tenant(principal, body),
        session=body.session,
        turn=body.turn,
        since_ms=since_ms,
        until_ms=until_ms,
    )
    try:
        return await services.run_blocking(export_for, services, principal, sel, body)
    except TimestampError as exc:
        raise GeminiError(502, str(exc), reason="TSA_FAILED") from exc
    except NotYetWitnessed as exc:
        raise GeminiError(503, str(exc), reason="NOT_YET_WITNESSED") from exc
    except ExportError as exc:
        if str(exc).startswith("no entries"):
            raise GeminiError(404, str(exc), reason="NO_EVIDENCE") from exc
        raise _bad(str(exc)) from exc
    except ValueError as exc:
        raise _bad(str(exc)) from exc


def parse_bundle_request(raw: bytes) -> BundleRequest:
    """The JSON body as a ``BundleRequest``; a bad one is a 400 naming the first problem."""
    try:
        return BundleRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem.get("loc", ())) or "the body"
        raise _bad(f"Invalid request body: {where}: {problem.get('msg')}.") from None


async def refused(request: Request, principal: Principal, err: TurnError) -> TurnError:
    """Record the refusal of ``principal``'s export (``request.refused``); it, to be raised."""
    return await get_services(request).pipeline.record_refusal(
        principal, err, http_method=request.method, path=request.url.path
    )


@router.post(
    "/bundles",
    openapi_extra={  # the body is parsed in the route, so that a bad one is a recorded refusal
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": BundleRequest.model_json_schema()}},
        }
    },
)
async def create_bundle(request: Request, principal: Reader) -> dict[str, Any]:
    """Export the evidence of the caller's tenant that the body (``BundleRequest``) selects;
    the bundle's id."""
    services = get_services(request)
    limit = services.settings.max_request_bytes
    raw = await request.body()
    try:
        if len(raw) > limit:
            raise _bad(f"The body is over {limit:,} bytes (CUSTODY_MAX_REQUEST_BYTES).")
        record = await make_bundle(services, principal, parse_bundle_request(raw))
    except GeminiError as err:
        raise await refused(request, principal, err) from None
    return {
        **record,
        "download": f"/api/v1/evidence/bundles/{record['id']}",
        "verify": "custody verify-bundle BUNDLE.zip --log-key "
        f"'{services.ledger.signer.verifier_key()}'",
    }


def find_bundle(services: Services, principal: Principal, bundle_id: str) -> Path | None:
    """The zip of bundle ``bundle_id`` when ``principal`` may read it (its tenant's readers and
    operators), else None — the same for another tenant's bundle as for none at all."""
    if not _BUNDLE_ID.fullmatch(bundle_id):
        return None
    folder = evidence_dir(services)
    try:
        record = json.loads((folder / f"{bundle_id}.json").read_text())
    except (OSError, ValueError):
        return None
    if not principal.is_operator and record.get("tenant") != principal.tenant:
        return None
    path = folder / f"{bundle_id}.zip"
    return path if path.is_file() else None


def bundles_of(services: Services, principal: Principal, limit: int = 20) -> list[dict[str, Any]]:
    """The newest bundle records ``principal`` may read."""
    folder = evidence_dir(services)
    out = []
    for meta in sorted(folder.glob("eb_*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if principal.is_operator or record.get("tenant") == principal.tenant:
            out.append(record)
        if len(out) >= limit:
            break
    return out


@router.get("/bundles/{bundle_id}")
async def download_bundle(request: Request, principal: Reader, bundle_id: str) -> FileResponse:
    """The bundle's zip, to its tenant's readers (and operators)."""
    services = get_services(request)
    path = await services.run_blocking(find_bundle, services, principal, bundle_id)
    if path is None:
        raise GeminiError(
            404,
            f"There is no evidence bundle {bundle_id!r} of tenant {principal.tenant!r}: export"
            " one with POST /api/v1/evidence/bundles.",
            reason="NO_SUCH_BUNDLE",
        )
    return FileResponse(path, media_type="application/zip", filename=path.name)
