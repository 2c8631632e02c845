"""``POST /api/v1/verify`` (auditor, operator): an image's Content Credentials and its record.

The body is the image itself (any image content type) or JSON ``{"data": "<base64>"}``. Bytes
that are not a readable image are the caller's 400 in Gemini's envelope, never a 500. The record
is the caller's own tenant's (an operator's: any tenant's); for another tenant's image the answer
says only that Custody released it (``governance.provenance.lookup.turn_record``). A file with no
manifest whose hash names no turn is looked up by its fingerprints, in the caller's tenant only
(``governance.provenance.fingerprint_lookup``): ``found_by`` is then ``fingerprint``, ``ledger``
the nearest candidate's record and ``fingerprint_lookup`` every candidate with its distances.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pybase64
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.gemini_routes import read_body
from governance.api.ledger_routes import not_yet_checkpointed
from governance.api.tenant_scope import may_sign_checkpoints, require_reader
from governance.auth.principal import Principal
from governance.provenance.approvals import approval_checks
from governance.provenance.fingerprint_lookup import look_up_by_fingerprint
from governance.provenance.lookup import NotYetCheckpointed, turn_for_hash, turn_record
from governance.provenance.verify import sniff_mime, verify_image, verify_independently
from storage.blobs import Commitments

if TYPE_CHECKING:
    from governance.services import Services

router = APIRouter(prefix="/api/v1", tags=["verify"])
log = logging.getLogger("custody")
T = TypeVar("T")


def _bad(message: str) -> GeminiError:
    return GeminiError(400, message, reason="BAD_VERIFY_REQUEST")


_HOW = 'Send the image file as the body (Content-Type image/...), or JSON {"data": "<base64>"}.'


def _image_of(body: bytes, content_type: str) -> bytes:
    if not content_type.startswith("application/json"):
        return body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad(f"The body is not valid JSON. {_HOW}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, str):
        raise _bad(f'The JSON body needs a "data" field holding the image in base64. {_HOW}')
    try:
        return bytes(pybase64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True))
    except (binascii.Error, ValueError):
        raise _bad(f'"data" is not valid base64. {_HOW}') from None


def _mime_of(image: bytes, content_type: str) -> str:
    """The type the bytes say they are (a declared type only when they do not say)."""
    sniffed = sniff_mime(image)
    if sniffed != "application/octet-stream":
        return sniffed
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared.startswith("image/"):
        return declared
    raise _bad(
        "The body is not an image Custody can read (PNG, JPEG, WebP, HEIC, AVIF, or another type"
        f" named in an image/... Content-Type). {_HOW}"
    )


def _checked(fn: Callable[..., T], *args: Any) -> T:
    """Run a verifier on caller-supplied bytes: a file it cannot parse is the caller's 400."""
    try:
        return fn(*args)
    except Exception as exc:
        log.info("verify: unreadable image (%s)", type(exc).__name__)
        raise _bad(
            "Custody cannot read this image: it is truncated, damaged or not of the type it"
            f" claims. Send the file exactly as released. {_HOW}"
        ) from None


# What Custody's assertion may tell a reader of another tenant: what made the image, not who.
_PUBLIC_ASSERTION_FIELDS = (
    "generator", "emulator", "synthid", "upstream", "model", "model_version", "gateway_version",
)  # fmt: skip
_TURN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def walled_c2pa(report: dict[str, Any]) -> dict[str, Any]:
    """The C2PA report of another tenant's image, without who made it or under which turn.

    The file itself carries its manifest, but Custody's answer keeps the tenant wall: the tenant,
    actor, turn id, ledger reference, prompt commitment and policy of another tenant's turn are
    left out, turn ids in ingredient titles are masked, and the session lineage is not shown.
    """
    custody = report.get("custody")
    if isinstance(custody, dict):
        kept = {k: custody[k] for k in _PUBLIC_ASSERTION_FIELDS if k in custody}
        kept["redacted"] = "another tenant's turn: who, which turn and which policy are not shown"
        report = {**report, "custody": kept}
    if report.get("lineage"):  # session, version and turn ids of another tenant's session
        report = {**report, "lineage": []}
    report["ingredients"] = [
        {**i, "title": _TURN_ID.sub("[another tenant's turn]", str(i.get("title", "")))}
        for i in report.get("ingredients") or []
    ]
    return report


@router.post("/verify")
async def verify(
    request: Request,
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> Response:
    services = get_services(request)
    body = await read_body(request, services.settings.max_request_bytes)
    content_type = request.headers.get("content-type", "")
    try:
        payload = await verification(
            services, principal, _image_of(body, content_type), content_type
        )
    except NotYetCheckpointed as exc:
        return not_yet_checkpointed(exc)
    return Response(orjson.dumps(payload), media_type="application/json")


async def verification(
    services: Services, principal: Principal, image: bytes, content_type: str
) -> dict[str, Any]:
    """What ``POST /api/v1/verify`` answers about ``image`` (the console's verify page shows
    the same): a ``GeminiError`` 400 for bytes that are no readable image, and
    ``NotYetCheckpointed`` when its record is newer than the latest checkpoint."""
    if not image:
        raise _bad(f"The request carries no image. {_HOW}")
    mime = _mime_of(image, content_type)
    anchors = services.signer.trust_anchors_pem()
    result = await services.run_blocking(_checked, verify_image, image, mime, anchors)
    independent = (
        await services.run_blocking(_checked, verify_independently, image, mime, anchors)
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
    viewer_tenant = None if principal.is_operator else principal.tenant
    commitments = Commitments(services.engine, services.blobs)
    may_sign = may_sign_checkpoints(principal)
    record: dict[str, Any] | None = None
    if turn_id:
        record = await services.run_blocking(
            partial(
                turn_record,
                services.ledger,
                turn_id,
                viewer_tenant=viewer_tenant,
                commitments=commitments,
                may_sign=may_sign,
            )
        )
    similar: dict[str, Any] | None = None
    if record is None and result.state == "none":
        # No manifest and unknown bytes: a re-encoded copy is found by its look, in the
        # caller's own tenant only.
        lookup = await services.run_blocking(
            partial(
                look_up_by_fingerprint,
                services.read_engine,
                services.ledger,
                image,
                viewer_tenant=viewer_tenant,
                commitments=commitments,
                may_sign=may_sign,
            )
        )
        similar = lookup.to_dict()
        if lookup.candidates:
            record, found_by = lookup.candidates[0].record, "fingerprint"
    c2pa_report = result.to_dict()
    visible = record if record is not None and record.get("visible", True) else None
    if record is not None and not record.get("visible", True):
        c2pa_report = walled_c2pa(c2pa_report)
    return {
        "sha256": sha256,
        "c2pa": c2pa_report,
        "independent": asdict(independent) if independent else None,
        "found_by": found_by if record else None,
        "ledger": record,
        "fingerprint_lookup": similar,
        "approvals": await services.run_blocking(
            approval_checks, services.ledger, result.custody, visible, sha256
        )
        if visible is not None
        else [],
    }
