"""Read the ledger over HTTP (auditor role): checkpoint, entries, RFC 6962 proofs, proof files.

Hashes are standard base64, proofs in RFC 6962 order, so any RFC 6962 verifier can check them.
An auditor sees the leaves of their own tenant; other tenants' entries show only their leaf hash,
which is all a verifier needs to rebuild the tree.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from governance.api.deps import get_services, require_role
from governance.api.errors import GeminiError
from governance.auth.principal import Principal
from storage.ledger.events import Entry
from storage.ledger.leaf import decode_leaf
from storage.ledger.proof_file import format_proof

router = APIRouter(prefix="/api/v1/ledger", tags=["ledger"])
MAX_ENTRIES = 1000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bad(message: str) -> GeminiError:
    return GeminiError(400, message, reason="BAD_LEDGER_QUERY")


def _entry_json(entry: Entry, principal: Principal) -> dict[str, object]:
    visible = principal.has_role("admin") or entry.event.tenant == principal.tenant
    out: dict[str, object] = {"index": entry.index, "leaf_hash": _b64(entry.leaf_hash)}
    if visible:
        out.update(
            time_ms=entry.time_ms,
            type=entry.event.type,
            leaf=_b64(entry.leaf),
            event=decode_leaf(entry.leaf),
        )
    else:
        out["redacted"] = "another tenant's entry: only its leaf hash is shown"
    return out


@router.get("/checkpoint", response_class=PlainTextResponse)
async def checkpoint(
    request: Request,
    _: Principal = Depends(require_role("auditor")),  # noqa: B008
) -> PlainTextResponse:
    """The latest signed checkpoint (C2SP tlog-checkpoint in a signed note) as text."""
    services = get_services(request)
    cp = await services.run_blocking(services.ledger.latest_checkpoint)
    return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")


@router.post("/checkpoint", response_class=PlainTextResponse)
async def issue_checkpoint(
    request: Request,
    _: Principal = Depends(require_role("admin")),  # noqa: B008
) -> PlainTextResponse:
    """Sign a checkpoint of the current tree now (admin)."""
    services = get_services(request)
    cp = await services.run_blocking(services.ledger.issue_checkpoint)
    return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")


@router.get("/entries")
async def entries(
    request: Request,
    start: int = Query(0, ge=0),
    end: int | None = Query(None, ge=0),
    principal: Principal = Depends(require_role("auditor")),  # noqa: B008
) -> dict[str, object]:
    """Entries [start, end), at most 1000 per call."""
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
        "entries": [_entry_json(e, principal) for e in rows],
    }


@router.get("/proof/inclusion")
async def inclusion(
    request: Request,
    index: int = Query(..., ge=0),
    size: int | None = Query(None, ge=1),
    _: Principal = Depends(require_role("auditor")),  # noqa: B008
) -> dict[str, object]:
    """The RFC 6962 audit path of entry ``index`` in the tree of ``size`` (default: latest)."""
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
    old: int = Query(..., ge=1),
    new: int | None = Query(None, ge=1),
    _: Principal = Depends(require_role("auditor")),  # noqa: B008
) -> dict[str, object]:
    """The RFC 6962 consistency proof between tree sizes ``old`` and ``new`` (default: latest)."""
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
    index: int = Query(..., ge=0),
    _: Principal = Depends(require_role("auditor")),  # noqa: B008
) -> PlainTextResponse:
    """A self-contained offline proof (C2SP tlog-proof) of entry ``index`` under the latest
    checkpoint; verify it with ``custody ledger verify-proof``."""
    services = get_services(request)
    ledger = services.ledger
    cp = await services.run_blocking(ledger.latest_checkpoint)
    if index >= cp.size:
        cp = await services.run_blocking(ledger.issue_checkpoint)
    if index >= cp.size:
        raise _bad(f"entry {index} does not exist (the log has {cp.size} entries).")
    path = await services.run_blocking(ledger.prove_inclusion, index, cp.size)
    return PlainTextResponse(format_proof(index, path, cp.note))
