"""``POST /api/v1/verify`` (auditor): an image's Content Credentials and its turn's record.

The body is the image itself (any image content type) or JSON ``{"data": "<base64>"}``.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import asdict
from typing import Any

import orjson
import pybase64
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from governance.api.deps import get_services, require_role
from governance.api.errors import GeminiError
from governance.api.gemini_routes import read_body
from governance.auth.principal import Principal
from governance.provenance.lookup import turn_for_hash, turn_record
from governance.provenance.verify import verify_image, verify_independently
from storage.blobs import Commitments

router = APIRouter(prefix="/api/v1", tags=["verify"])


def _image_of(body: bytes, content_type: str) -> bytes:
    if content_type.startswith("application/json"):
        try:
            doc = orjson.loads(body)
            return bytes(pybase64.b64decode(doc["data"], validate=True))
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError) as exc:
            raise GeminiError(
                400,
                f'send the image as the body, or JSON {{"data": "<base64>"}}: {exc}',
                reason="BAD_VERIFY_REQUEST",
            ) from exc
    return body


@router.post("/verify")
async def verify(
    request: Request,
    principal: Principal = Depends(require_role("auditor")),  # noqa: B008
) -> Response:
    services = get_services(request)
    body = await read_body(request, services.settings.max_request_bytes)
    image = _image_of(body, request.headers.get("content-type", ""))
    if not image:
        raise GeminiError(400, "the request carries no image", reason="BAD_VERIFY_REQUEST")
    mime = request.headers.get("content-type", "")
    mime = mime if mime.startswith("image/") else None
    anchors = services.signer.trust_anchors_pem()
    result = await services.run_blocking(verify_image, image, mime, anchors)
    independent = (
        await services.run_blocking(verify_independently, image, mime, anchors)
        if result.state != "none"
        else None
    )
    sha256 = hashlib.sha256(image).hexdigest()
    turn_id = None
    found_by = None
    ledger_ref = (result.custody or {}).get("ledger") or {}
    if ledger_ref.get("log_origin") == services.settings.log_origin and ledger_ref.get("turn_id"):
        turn_id, found_by = str(ledger_ref["turn_id"]), "manifest"
    else:
        turn_id = await services.run_blocking(turn_for_hash, services.read_engine, sha256)
        found_by = "hash" if turn_id else None
    record: dict[str, Any] | None = None
    if turn_id:
        # Event bodies and the prompt only for the turn's own tenant.
        viewer = principal.tenant
        record = await services.run_blocking(
            turn_record,
            services.ledger,
            turn_id,
            viewer_tenant=viewer,
            commitments=Commitments(services.engine, services.blobs),
        )
    payload = {
        "sha256": sha256,
        "c2pa": result.to_dict(),
        "independent": asdict(independent) if independent else None,
        "found_by": found_by if record else None,
        "ledger": record,
    }
    return Response(orjson.dumps(payload), media_type="application/json")
