"""Read the ledger over HTTP (auditor or operator): checkpoint, entries, RFC 6962 proofs, proofs.

Hashes are standard base64, proofs in RFC 6962 order, so any RFC 6962 verifier can check them.
A reader sees the leaves of their own tenant and of the installation (tenant ``*``, e.g.
``policy.reloaded``: every tenant needs to know which policy governed its turns); other tenants'
entries show only index and leaf hash, which is all a verifier needs to rebuild the tree. Only an
operator reads every tenant (``governance.api.tenant_scope``). Proofs are hashes only.

Signing a checkpoint is an admin's or operator's act (``POST /checkpoint``); an auditor asking for
a proof of an entry newer than the latest checkpoint gets 503 with ``Retry-After`` (the background
job signs one), never a checkpoint signed on their behalf. Query integers are bounded (2^62), so a
huge one is a 400 in Gemini's envelope, not an overflow in the database driver.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response

from governance.api.deps import get_services
from governance.api.errors import GeminiError
from governance.api.tenant_scope import (
    may_sign_checkpoints,
    require_reader,
    require_signer,
    sees_tenant,
)
from governance.auth.principal import Principal
from governance.provenance.lookup import NotYetCheckpointed, checkpoint_covering
from governance.services import Services
from storage.ledger.events import Entry
from storage.ledger.leaf import decode_leaf
from storage.ledger.proof_file import format_proof

router = APIRouter(prefix="/api/v1/ledger", tags=["ledger"])
MAX_ENTRIES = 1000
MAX_INDEX = 2**62  # far beyond any log; keeps every integer inside a signed 64-bit column


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bad(message: str) -> GeminiError:
    return GeminiError(400, message, reason="BAD_LEDGER_QUERY")


def _bounded(name: str, value: int | None, *, low: int = 0) -> int | None:
    if value is not None and not low <= value <= MAX_INDEX:
        raise _bad(f"{name} must be an integer from {low} to 2^62; got {value}.")
    return value


def not_yet_checkpointed(exc: NotYetCheckpointed) -> Response:
    """503 UNAVAILABLE with ``Retry-After`` (whole seconds, at least 1) when a retry will do."""
    response = GeminiError(503, str(exc), reason="NOT_YET_CHECKPOINTED").response()
    if exc.retry_ms:
        response.headers["retry-after"] = str(max(1, -(-exc.retry_ms // 1000)))
    return response


def entry_json(entry: Entry, principal: Principal) -> dict[str, object]:
    visible = sees_tenant(principal, entry.event.tenant)
    out: dict[str, object] = {"index": entry.index, "leaf_hash": _b64(entry.leaf_hash)}
    if visible:
        out.update(
            time_ms=entry.time_ms,
            type=entry.event.type,
            leaf=_b64(entry.leaf),
            event=decode_leaf(entry.leaf),
        )
    else:
        out["redacted"] = "another tenant's entry: only its index and leaf hash are shown"
    return out


@router.get("/checkpoint", response_class=PlainTextResponse)
async def checkpoint(
    request: Request,
    _: Principal = Depends(require_reader),  # noqa: B008
) -> Response:
    """The latest published checkpoint (C2SP tlog-checkpoint in a signed note) as text: with
    witnesses configured, the newest one a quorum cosigned (with their cosignatures)."""
    services = get_services(request)
    if services.witness is not None:
        return await _cosigned(services)
    cp = await services.run_blocking(services.ledger.latest_checkpoint)
    return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")


async def _cosigned(services: Services) -> Response:
    from storage.ledger.witnessed import published_checkpoint

    policy = services.witness.policy if services.witness else None
    cp = await services.run_blocking(
        published_checkpoint,
        services.engine,
        services.ledger.origin,
        policy.keys if policy else [],
        policy.quorum if policy else 0,
    )
    if cp is None:
        response = GeminiError(
            503,
            "No checkpoint has been cosigned by the witness quorum yet"
            " (CUSTODY_WITNESS_QUORUM); see checkpoint.witness_refused events in the ledger.",
            reason="NOT_YET_WITNESSED",
        ).response()
        response.headers["retry-after"] = "5"
        return response
    return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")


@router.get("/checkpoint/cosigned", response_class=PlainTextResponse)
async def cosigned_checkpoint(
    request: Request,
    _: Principal = Depends(require_reader),  # noqa: B008
) -> Response:
    """The newest checkpoint the witness quorum cosigned, the witnesses' cosignature lines
    appended to the log's note (without witnesses: the newest checkpoint, as signed)."""
    return await _cosigned(get_services(request))


@router.post("/checkpoint", response_class=PlainTextResponse)
async def issue_checkpoint(
    request: Request,
    _: Principal = Depends(require_signer),  # noqa: B008
) -> PlainTextResponse:
    """Sign a checkpoint of the current tree now (admin or operator)."""
    services = get_services(request)
    cp = await services.run_blocking(services.ledger.issue_checkpoint)
    return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")


@router.get("/entries")
async def entries(
    request: Request,
    start: int = Query(0),
    end: int | None = Query(None),
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, object]:
    """Entries [start, end), at most 1000 per call."""
    start = _bounded("start", start) or 0
    end = _bounded("end", end)
    services = get_services(request)
    size = await services.run_blocking(services.ledger.size)
    end = size if end is None else end
    if end < start:
        raise _bad(f"end ({end}) is before start ({start}).")
    end = min(end, size, start + MAX_ENTRIES)
    rows = await services.run_blocking(services.ledger.entries, start, end)
    return {
        "size": size,
        "start": start,
        "end": end,
        "entries": [entry_json(e, principal) for e in rows],
    }


@router.get("/proof/inclusion")
async def inclusion(
    request: Request,
    index: int = Query(...),
    size: int | None = Query(None),
    _: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, object]:
    """The RFC 6962 audit path of entry ``index`` in the tree of ``size`` (default: latest)."""
    _bounded("index", index)
    _bounded("size", size, low=1)
    services = get_services(request)
    ledger = services.ledger
    current = await services.run_blocking(ledger.size)
    size = size or current
    if size > current or index >= size:
        raise _bad(f"need index < size <= {current}; got index={index}, size={size}.")
    path = await services.run_blocking(ledger.prove_inclusion, index, size)
    entry = await services.run_blocking(ledger.entry, index)
    root = await services.run_blocking(ledger.root, size)
    return {
        "index": index,
        "size": size,
        "leaf_hash": _b64(entry.leaf_hash),
        "root_hash": _b64(root),
        "hashes": [_b64(h) for h in path],
    }


@router.get("/proof/consistency")
async def consistency(
    request: Request,
    old: int = Query(...),
    new: int | None = Query(None),
    _: Principal = Depends(require_reader),  # noqa: B008
) -> dict[str, object]:
    """The RFC 6962 consistency proof between tree sizes ``old`` and ``new`` (default: latest)."""
    _bounded("old", old, low=1)
    _bounded("new", new, low=1)
    services = get_services(request)
    ledger = services.ledger
    current = await services.run_blocking(ledger.size)
    new = new or current
    if not old <= new <= current:
        raise _bad(f"need old <= new <= {current}; got old={old}, new={new}.")
    path = await services.run_blocking(ledger.prove_consistency, old, new)
    old_root = await services.run_blocking(ledger.root, old)
    new_root = await services.run_blocking(ledger.root, new)
    return {
        "old": old,
        "new": new,
        "old_root": _b64(old_root),
        "new_root": _b64(new_root),
        "hashes": [_b64(h) for h in path],
    }


@router.get("/proof/file", response_class=PlainTextResponse)
async def proof_file(
    request: Request,
    index: int = Query(...),
    principal: Principal = Depends(require_reader),  # noqa: B008
) -> Response:
    """A self-contained offline proof (C2SP tlog-proof) of entry ``index`` under the latest
    checkpoint; verify it with ``custody ledger verify-proof``. An entry newer than that
    checkpoint: 503 + Retry-After for an auditor, a checkpoint signed now for an admin/operator."""
    _bounded("index", index)
    services = get_services(request)
    ledger = services.ledger
    size = await services.run_blocking(ledger.size)
    if index >= size:
        raise _bad(f"entry {index} does not exist (the log has {size} entries).")
    try:
        cp = await services.run_blocking(
            checkpoint_covering, ledger, index, may_sign=may_sign_checkpoints(principal)
        )
    except NotYetCheckpointed as exc:
        return not_yet_checkpointed(exc)
    path = await services.run_blocking(ledger.prove_inclusion, index, cp.size)
    return PlainTextResponse(format_proof(index, path, cp.note))
