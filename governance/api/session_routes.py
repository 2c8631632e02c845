"""The native session API: sessions, uploads with provenance, turns and linked edits, masks,
rollback, labels, the graph and the timeline.

Who may do what: a session belongs to the editor who created it (or whose chat made it); only
that editor writes to it (an admin holds the editor role but writes only to their own sessions).
The tenant's reviewers and auditors read it (the console's session page), the operator reads any
tenant's. A session of another tenant, or one this caller may not read, answers 404 as if it did
not exist. Every refusal of an authenticated caller is recorded (``request.refused``) before the
4xx answer, in Gemini's error envelope like every Custody route.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from governance.api.deps import authenticate, get_services
from governance.api.session_turns import (
    TargetSpec,
    VersionBytes,
    run_linked_edit,
    run_target,
)
from governance.api.tenant_scope import sees_tenant
from governance.auth.principal import Principal
from governance.pipeline.errors import TurnError
from governance.pipeline.parse import inspect_image
from governance.sessions import graph_from_rows
from governance.sessions.desk import SessionDesk
from governance.sessions.lineage import CONSENT_VALUES, Provenance, new_id

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])
DEFAULT_MODEL = "gemini-2.5-flash-image"
_ID = re.compile(r"^(ses|img|ver|int)_[0-9a-f]{24}$")
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSession(_Body):
    title: str | None = Field(default=None, max_length=256)


class Upload(_Body):
    data: str  # base64
    mime_type: str
    source: str = Field(min_length=1, max_length=256)
    rights_holder: str | None = Field(default=None, max_length=256)
    licence: str | None = Field(default=None, max_length=256)
    identifiable_people: bool | None = None
    consent: str | None = None


class Target(_Body):
    version: str
    mask: str | None = None  # base64 PNG, for this target only
    exclude: bool = False


class TurnBody(_Body):
    instruction: str = Field(min_length=1, max_length=20_000)
    targets: list[Target] = Field(min_length=1)
    model: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=128)
    mask: str | None = None  # base64 PNG shared by every target without its own
    reference: str | None = None  # a version id of this session
    intent: str | None = None  # retry: the intent of the linked edit to complete


class Rollback(_Body):
    version: str


class Label(_Body):
    label: str = Field(min_length=1, max_length=128)


Caller = Annotated[Principal, Depends(authenticate)]
M = TypeVar("M", bound=BaseModel)


async def _refuse(request: Request, principal: Principal, err: TurnError) -> TurnError:
    """Record the refusal and return it, to be raised."""
    services = get_services(request)
    return await services.pipeline.record_refusal(
        principal,
        err,
        http_method=request.method,
        path=request.url.path,
        session=request.path_params.get("session_id"),
    )


def _bad(message: str, reason: str = "INVALID_REQUEST") -> TurnError:
    return TurnError(400, message, reason=reason)


async def _parsed(request: Request, principal: Principal, model: type[M]) -> M:
    """The JSON body as ``model``; a bad one is a recorded 400 naming the first problem."""
    limit = get_services(request).settings.max_request_bytes
    raw = await request.body()
    try:
        if len(raw) > limit:
            raise _bad(f"The body is over {limit:,} bytes (CUSTODY_MAX_REQUEST_BYTES).")
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem.get("loc", ())) or "the body"
        err = _bad(f"Invalid request body: {where}: {problem.get('msg')}.", "BAD_SESSION_REQUEST")
        raise await _refuse(request, principal, err) from None
    except TurnError as err:
        raise await _refuse(request, principal, err) from None


def _unknown_session(session_id: str) -> TurnError:
    return TurnError(
        404,
        f"No session {session_id[:64]!r} that this key may see. List yours with"
        " GET /api/v1/sessions.",
        reason="SESSION_NOT_FOUND",
    )


async def _session(
    request: Request, principal: Principal, session_id: str, *, write: bool
) -> dict[str, Any]:
    """The session row, when ``principal`` may read it (or write to it, with ``write``)."""
    services = get_services(request)
    row = None
    if _ID.match(session_id):
        row = await services.run_blocking(services.sessions.session, session_id)
    readable = row is not None and (
        (row["tenant"] == principal.tenant and row["actor"] == principal.actor)
        or (
            sees_tenant(principal, row["tenant"])
            and any(principal.has_role(r) for r in ("reviewer", "auditor", "operator"))
        )
    )
    if not readable:
        raise await _refuse(request, principal, _unknown_session(session_id))
    assert row is not None
    if write and not (
        principal.has_role("editor")
        and row["tenant"] == principal.tenant
        and row["actor"] == principal.actor
    ):
        raise await _refuse(
            request,
            principal,
            TurnError(
                403,
                f"Session {session_id} belongs to {row['actor']!r}; only that editor changes it"
                " (your key may read it).",
                reason="NOT_SESSION_OWNER",
            ),
        )
    return row


async def _editor(request: Request, principal: Principal) -> None:
    if not principal.has_role("editor"):
        raise await _refuse(
            request,
            principal,
            TurnError(
                403,
                f"This route needs the 'editor' role; the key of {principal.actor!r} has"
                f" {', '.join(sorted(principal.roles))}.",
                reason="ROLE_REQUIRED",
            ),
        )


def _decode(text: str, where: str) -> bytes:
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where} is not valid base64.", "INVALID_BASE64") from None


async def _version(
    request: Request, principal: Principal, session: dict[str, Any], version_id: str
) -> VersionBytes:
    """A version of ``session`` with its bytes; 404 when it is not one of the session's."""
    services = get_services(request)
    row = await services.run_blocking(services.sessions.version, version_id)
    if row is None or row["session_id"] != session["session_id"]:
        raise await _refuse(
            request,
            principal,
            TurnError(
                404,
                f"Session {session['session_id']} has no version {version_id[:64]!r}; its"
                " versions are listed by GET /api/v1/sessions/{id}.",
                reason="VERSION_NOT_FOUND",
            ),
        )
    data = await services.run_blocking(services.commitments.open, row["commitment"])
    image = await services.run_blocking(services.sessions.image, row["image_id"])
    if data is None or image is None:
        raise await _refuse(
            request,
            principal,
            TurnError(
                410,
                f"The content of version {version_id} was erased; it can no longer be edited.",
                reason="CONTENT_ERASED",
            ),
        )
    return VersionBytes(
        version_id, row["image_id"], data, row["mime_type"], Provenance.of_row(image)
    )


def _graph(services: Any, session: dict[str, Any]) -> dict[str, Any]:
    rows = services.sessions.graph_rows(session["session_id"])
    graph = graph_from_rows(session, rows)
    details = {v["version_id"]: v for v in rows["versions"]}
    for v in graph["versions"]:
        row = details[v["version"]]
        v.update(sha256=row["sha256"], mime_type=row["mime_type"], created_ms=row["created_ms"])
    graph["title"] = session.get("title")
    graph["tenant"] = session["tenant"]
    return graph


@router.post("")
async def create_session(request: Request, principal: Caller) -> Any:
    """A new session of the calling editor."""
    await _editor(request, principal)
    body = await _parsed(request, principal, CreateSession)
    services = get_services(request)
    desk = SessionDesk(services.ledger, services.commitments)
    session_id = await services.run_blocking(
        desk.create, tenant=principal.tenant, actor=principal.actor, title=body.title
    )
    return {"session": session_id}


@router.get("")
async def list_sessions(request: Request, principal: Caller) -> Any:
    """The caller's sessions (a reviewer's, auditor's or the operator's: the tenant's)."""
    services = get_services(request)
    everyone = any(principal.has_role(r) for r in ("reviewer", "auditor"))
    rows = await services.run_blocking(
        services.sessions.sessions_of, principal.tenant, None if everyone else principal.actor
    )
    return {
        "sessions": [
            {k: r[k] for k in ("session_id", "actor", "origin", "title", "created_ms")}
            for r in rows
        ]
    }


@router.get("/{session_id}")
async def get_session(request: Request, principal: Caller, session_id: str) -> Any:
    """The session's version graph: images (with provenance), versions, turns, labels."""
    session = await _session(request, principal, session_id, write=False)
    services = get_services(request)
    return await services.run_blocking(_graph, services, session)


@router.get("/{session_id}/timeline")
async def timeline(request: Request, principal: Caller, session_id: str) -> Any:
    """The session's turns in the order they closed, and its labels, with their times."""
    session = await _session(request, principal, session_id, write=False)
    services = get_services(request)
    rows = await services.run_blocking(services.sessions.graph_rows, session_id)
    graph = graph_from_rows(session, rows)
    when = {t["turn_id"]: t for t in rows["turns"]}
    turns = sorted(graph["turns"], key=lambda t: (when[t["turn"]]["created_ms"], t["turn"]))
    return {
        "session": session_id,
        "turns": [
            {
                **t,
                "actor": when[t["turn"]]["actor"],
                "error": when[t["turn"]]["error"],
                "created_ms": when[t["turn"]]["created_ms"],
            }
            for t in turns
        ],
        "labels": [
            {
                "version": r["version_id"],
                "label": r["label"],
                "by": r["actor"],
                "created_ms": r["created_ms"],
            }
            for r in rows["labels"]
        ],
    }


@router.post("/{session_id}/images")
async def upload_image(request: Request, principal: Caller, session_id: str) -> Any:
    """Upload an image with its provenance facts; its first version is these bytes."""
    session = await _session(request, principal, session_id, write=True)
    body = await _parsed(request, principal, Upload)
    services = get_services(request)
    try:
        mime = body.mime_type.lower()
        if mime not in _IMAGE_TYPES:
            raise _bad(
                f"mime_type {body.mime_type[:64]!r} is not one of {', '.join(_IMAGE_TYPES)}.",
                "UNSUPPORTED_MIME_TYPE",
            )
        if body.consent is not None and body.consent not in CONSENT_VALUES:
            raise _bad(
                f"consent must be one of {', '.join(CONSENT_VALUES)}, not {body.consent[:32]!r}.",
                "INVALID_CONSENT",
            )
        data = _decode(body.data, "data")
        width, height = await services.run_blocking(
            inspect_image, data, mime, "the uploaded image", services.settings.max_image_pixels
        )
    except TurnError as err:
        raise await _refuse(request, principal, err) from None
    provenance = Provenance(
        source=body.source,
        rights_holder=body.rights_holder,
        licence=body.licence,
        identifiable_people=body.identifiable_people,
        consent=body.consent,
    )
    desk = SessionDesk(services.ledger, services.commitments)
    image = await services.run_blocking(
        lambda: desk.upload(
            tenant=principal.tenant,
            actor=principal.actor,
            session_id=session["session_id"],
            data=data,
            mime_type=mime,
            width=width,
            height=height,
            provenance=provenance,
        )
    )
    return {"image": image.image_id, "version": image.version_id, "sha256": image.sha256}


@router.get("/{session_id}/versions/{version_id}/content")
async def version_content(
    request: Request, principal: Caller, session_id: str, version_id: str
) -> Response:
    """A version's bytes as released (or uploaded)."""
    session = await _session(request, principal, session_id, write=False)
    version = await _version(request, principal, session, version_id)
    return Response(version.data, media_type=version.mime_type)


async def _mask(
    request: Request, principal: Caller, text: str, target: VersionBytes, where: str
) -> bytes:
    """A mask's PNG bytes; 400 unless it is a PNG of exactly the target's dimensions."""
    services = get_services(request)
    pixels = services.settings.max_image_pixels
    try:
        data = _decode(text, where)
        mask_size = await services.run_blocking(inspect_image, data, "image/png", where, pixels)
        target_size = await services.run_blocking(
            inspect_image, target.data, target.mime_type, "the target", pixels
        )
        if mask_size != target_size:
            raise _bad(
                f"{where} is {mask_size[0]}x{mask_size[1]} but version {target.version_id} is"
                f" {target_size[0]}x{target_size[1]}; a mask must have exactly the dimensions"
                " of the image it masks.",
                "MASK_SIZE_MISMATCH",
            )
    except TurnError as err:
        raise await _refuse(request, principal, err) from None
    return data


@router.post("/{session_id}/turns")
async def run_turn(request: Request, principal: Caller, session_id: str) -> Any:
    """One instruction on one target, or a linked edit on several (one turn per target, one
    intent); ``exclude`` leaves a target out. Partial failures are per-target results."""
    session = await _session(request, principal, session_id, write=True)
    body = await _parsed(request, principal, TurnBody)
    services = get_services(request)
    limit = services.settings.linked_edit_max_targets
    if len(body.targets) > limit:
        raise await _refuse(
            request,
            principal,
            _bad(f"A linked edit has at most {limit} targets (CUSTODY_LINKED_EDIT_MAX_TARGETS)."),
        )
    if body.intent is not None:
        turns = (await services.run_blocking(services.sessions.graph_rows, session_id))["turns"]
        if not _ID.match(body.intent) or all(t["intent_id"] != body.intent for t in turns):
            raise await _refuse(
                request,
                principal,
                TurnError(
                    404,
                    f"Session {session_id} has no linked edit with intent {body.intent[:64]!r};"
                    " to retry a target, send the intent its first run answered.",
                    reason="INTENT_NOT_FOUND",
                ),
            )
    reference = (
        await _version(request, principal, session, body.reference) if body.reference else None
    )
    specs: list[TargetSpec] = []
    results: list[dict[str, Any]] = []
    for n, target in enumerate(body.targets):
        if target.exclude:
            results.append({"target": target.version, "status": "excluded"})
            continue
        version = await _version(request, principal, session, target.version)
        mask_text = target.mask if target.mask is not None else body.mask
        mask = (
            await _mask(request, principal, mask_text, version, f"targets[{n}].mask")
            if mask_text is not None
            else None
        )
        specs.append(TargetSpec(version, mask))
        results.append({})
    intent = body.intent or new_id("int")
    ran = iter(
        await run_linked_edit(
            services.pipeline,
            principal,
            session_id=session_id,
            model=body.model,
            instruction=body.instruction,
            specs=specs,
            reference=reference,
            intent_id=intent,
            concurrency=services.settings.linked_edit_concurrency,
        )
    )
    results = [r or next(ran) for r in results]
    return {"session": session_id, "intent": intent, "results": results}


@router.post("/{session_id}/rollback")
async def rollback(request: Request, principal: Caller, session_id: str) -> Any:
    """Roll back to an earlier version: a recorded turn with no upstream call whose output is
    that version, re-signed, as the newest version of its image."""
    session = await _session(request, principal, session_id, write=True)
    body = await _parsed(request, principal, Rollback)
    services = get_services(request)
    version = await _version(request, principal, session, body.version)
    result = await run_target(
        services.pipeline,
        principal,
        session_id=session_id,
        model=DEFAULT_MODEL,
        instruction=f"Roll back to version {version.version_id}",
        spec=TargetSpec(version),
        reference=None,
        intent_id=None,
        kind="rollback",
    )
    if result["status"] != "released":
        raise TurnError(result["code"], result["error"], reason=result["reason"])
    return {"session": session_id, **result}


@router.post("/{session_id}/versions/{version_id}/labels")
async def label_version(
    request: Request, principal: Caller, session_id: str, version_id: str
) -> Any:
    """Label a version ("StudioStyle1", "approved for campaign")."""
    session = await _session(request, principal, session_id, write=True)
    body = await _parsed(request, principal, Label)
    await _version(request, principal, session, version_id)
    services = get_services(request)
    desk = SessionDesk(services.ledger, services.commitments)
    await services.run_blocking(
        lambda: desk.label(
            tenant=principal.tenant,
            actor=principal.actor,
            session_id=session_id,
            version_id=version_id,
            label=body.label,
        )
    )
    return {"session": session_id, "version": version_id, "label": body.label}
