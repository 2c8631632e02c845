"""One session's authorship report as a JSON-ready dict (``render`` turns it into HTML or PDF).

Built from the session's ledger entries alone; the session tables give only the versions'
bytes for thumbnails and the final version's size. Every act names its ledger entries, each with
the route of its offline inclusion proof (and the turn's proofs for an act of a turn).
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

from PIL import Image

from governance.authorship.attribution import attribute
from governance.authorship.entries import session_leaves
from governance.authorship.record import Opener, build_record
from governance.authorship.wording import draft
from storage.blobs import Commitments
from storage.ledger.log import Ledger
from storage.sessions import SessionStore

THUMBNAIL = 160  # px, the longer side


class AuthorshipError(ValueError):
    """A report that cannot be made as asked (the message says why)."""


def proof_routes(entry: dict[str, Any], turn: str | None) -> dict[str, Any]:
    out = {
        **entry,
        "entry": f"/api/v1/ledger/entries?start={entry['index']}&end={entry['index'] + 1}",
        "proof": f"/api/v1/ledger/proof/file?index={entry['index']}",
    }
    if turn:
        out["turn_proof"] = f"/api/v1/query/turns/{turn}/proof"
    return out


def _thumbnail(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            out = io.BytesIO()
            img.convert("RGB").save(out, format="PNG")
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _size(data: bytes | None) -> tuple[int, int] | None:
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (OSError, ValueError):
        return None


def build_report(
    ledger: Ledger,
    sessions: SessionStore,
    commitments: Commitments,
    session: dict[str, Any],
    *,
    version: str | None = None,
    open_content: bool = True,
) -> dict[str, Any]:
    """The report of ``session`` (its ``edit_sessions`` row). ``version`` names the final
    version (default: the newest); ``open_content`` opens prompts and masks and adds thumbnails
    (else they stay commitments)."""
    session_id = session["session_id"]
    opener: Opener | None = commitments.open if open_content else None
    leaves = session_leaves(ledger, session["tenant"], session_id)
    rec = build_record(leaves, session_id, opener)
    types = {leaf["index"]: leaf["type"] for leaf in leaves}
    if version is not None and version not in rec.versions:
        raise AuthorshipError(
            f"Session {session_id} has no version {version[:64]!r} in its ledger record."
        )
    final = version or max(rec.versions.values(), key=lambda v: v.index, default=None)
    final_id = final if isinstance(final, str) else (final.version if final else None)
    rows = {r["version_id"]: r for r in sessions.graph_rows(session_id)["versions"]}
    versions = []
    final_bytes = None
    for v in sorted(rec.versions.values(), key=lambda v: v.index):
        row = rows.get(v.version)
        data = commitments.open(row["commitment"]) if row and open_content else None
        if v.version == final_id:
            final_bytes = (
                data if data is not None else (commitments.open(row["commitment"]) if row else None)
            )
        versions.append(
            {
                "version": v.version,
                "image": v.image,
                "parent": v.parent,
                "kind": v.kind,
                "turn": v.turn,
                "model": v.model,
                "sha256": row["sha256"] if row else None,
                "thumbnail": _thumbnail(data),
                "entry": proof_routes({"index": v.index, "type": types[v.index]}, v.turn),
            }
        )
    overview = None
    if final_id is not None:
        size = _size(final_bytes)
        overview = attribute(rec.versions, final_id, commitments.open, size)
    for act in rec.acts:
        act["entries"] = [proof_routes(e, act.get("turn")) for e in act["entries"]]
    systems = sorted(rec.ai_systems.values(), key=lambda s: s["model"])
    names = [
        s["model"] + (f" ({', '.join(s['model_versions'])})" if s["model_versions"] else "")
        for s in systems
    ]
    return {
        "session": session_id,
        "tenant": session["tenant"],
        "owner": session["actor"],
        "title": session.get("title"),
        "generated_ms": int(time.time() * 1000),
        "ledger_size": ledger.size(),
        "content": "opened" if open_content else "commitments",
        "entries": len(leaves),
        "acts": rec.acts,
        "human_acts": sum(1 for a in rec.acts if a["who"] == "human"),
        "ai_acts": sum(1 for a in rec.acts if a["who"] == "ai"),
        "versions": versions,
        "uploads": rec.uploads,
        "final_version": final_id,
        "attribution": overview,
        "ai_systems": systems,
        "draft": draft(rec.acts, overview, names),
    }
