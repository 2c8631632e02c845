"""The compliance record of one released output: which marking it carries, and where.

For an output found by its hash (signed or as the upstream made it) in the caller's tenant, the
record reads the signed file back from the blob store and reports, from the file itself:

- the C2PA manifest and its trust status (``governance.provenance.verify``, offline, under this
  installation's anchors);
- the upstream's own Content Credentials: whether the upstream output carried them (the
  ``output.signed`` event says) and whether the signed file keeps them as its ``parentOf``
  ingredient;
- SynthID: what the upstream states (Custody's assertion carries the statement; Custody does not
  detect watermarks), or "not claimed";
- the soft binding: a ``c2pa.soft-binding`` assertion, or absent;
- the SB 942 latent-disclosure fields (provider, system name and version, time of creation or
  alteration, unique identifier), each with its location: the manifest, the assertion label and
  a JSON pointer into that assertion's data (or into the manifest for claim-level fields);

and, from the ledger, the EU AI Act disclosure category the tenant's policy assigned
(``obligations.disclosure`` of the turn's last ``policy.decided``). ``missing`` lists every
required marking the output lacks (``REQUIRED``); the soft binding is reported but not required
until this installation writes one. An erased file can no longer be read: its record says so
and every file-borne marking is missing (unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, or_, select, tuple_

from governance.compliance.queries import MAX_LIMIT, Page, QueryError, format_cursor, parse_cursor
from governance.provenance.types import ASSERTION_LABEL
from governance.provenance.verify import read_manifest_store, verify_image
from storage.blobs import Commitments
from storage.ledger.log import Ledger
from storage.schema.turns import TURN_IMAGES, TURNS

DISCLOSURE_CATEGORIES = ("fully_generated", "partially_edited", "deep_fake")
REQUIRED = (
    "c2pa_manifest",
    "sb942_provider",
    "sb942_system",
    "sb942_time",
    "sb942_identifier",
    "ai_act_disclosure",
    "upstream_credentials",
    "soft_binding",
)
SOFT_BINDING_PREFIX = "c2pa.soft-binding"
ACTION_LABELS = ("c2pa.actions.v2", "c2pa.actions")


@dataclass(frozen=True)
class RecordSources:
    """What a record is read from: the turn index, the ledger, the blobs, the trust anchors."""

    engine: Engine
    ledger: Ledger
    commitments: Commitments
    anchors_pem: str


def _location(manifest: str | None, assertion: str | None, pointer: str) -> dict[str, Any]:
    return {"manifest": manifest, "assertion": assertion, "pointer": pointer}


def _field(value: Any, location: dict[str, Any] | None) -> dict[str, Any]:
    return {"value": value, "location": location, "present": value not in (None, "", {})}


def _assertions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in manifest.get("assertions") or [] if isinstance(a, dict)]


def latent_disclosure(store: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """SB 942's four latent-disclosure fields of the active manifest, each with its location."""
    empty = {name: _field(None, None) for name in ("provider", "system", "time", "identifier")}
    if not store:
        return empty
    label = store.get("active_manifest")
    manifest = (store.get("manifests") or {}).get(label) or {}
    out = dict(empty)
    for a in _assertions(manifest):
        data: dict[str, Any] = a["data"] if isinstance(a.get("data"), dict) else {}
        if a.get("label") == ASSERTION_LABEL and data.get("generator"):
            out["provider"] = _field(
                data["generator"], _location(label, ASSERTION_LABEL, "/generator")
            )
        if a.get("label") in ACTION_LABELS:
            for i, action in enumerate(data.get("actions") or []):
                agent = action.get("softwareAgent")
                if isinstance(agent, dict) and not out["system"]["present"]:
                    at = _location(label, a["label"], f"/actions/{i}/softwareAgent")
                    out["system"] = _field(
                        {"name": agent.get("name"), "version": agent.get("version")}, at
                    )
                if action.get("when") and not out["time"]["present"]:
                    at = _location(label, a["label"], f"/actions/{i}/when")
                    out["time"] = _field(action["when"], at)
    signed_time = (manifest.get("signature_info") or {}).get("time")
    if signed_time and not out["time"]["present"]:
        out["time"] = _field(signed_time, _location(label, None, "/signature_info/time"))
    if label:
        out["identifier"] = _field(label, _location(label, None, "/label"))
    return out


def _soft_binding(store: dict[str, Any] | None) -> dict[str, Any]:
    label = (store or {}).get("active_manifest")
    manifest = ((store or {}).get("manifests") or {}).get(label) or {}
    for a in _assertions(manifest):
        if str(a.get("label", "")).startswith(SOFT_BINDING_PREFIX):
            data: dict[str, Any] = a["data"] if isinstance(a.get("data"), dict) else {}
            return {
                "present": True,
                "alg": data.get("alg"),
                "location": _location(label, a["label"], ""),
            }
    return {"present": False, "note": f"the manifest has no {SOFT_BINDING_PREFIX} assertion"}


def _synthid(custody: dict[str, Any] | None, label: str | None) -> dict[str, Any]:
    note = (custody or {}).get("synthid")
    if not isinstance(note, dict):
        return {"status": "not claimed", "statement": None, "location": None}
    claimed = bool(note.get("provider")) and note.get("watermark") is not False
    return {
        "status": f"stated by {note['provider']}, not verified by Custody"
        if claimed
        else "not claimed",
        "statement": note.get("statement"),
        "location": _location(label, ASSERTION_LABEL, "/synthid"),
    }


def marking_of(
    data: bytes | None, mime: str, anchors_pem: str, upstream_kind: str
) -> dict[str, Any]:
    """What marking a signed file carries (module doc); ``data`` None: the file was erased."""
    if data is None:
        return {
            "file_available": False,
            "c2pa": {"present": False, "state": "unknown", "note": "the signed file was erased"},
            "upstream_credentials": {"carried": upstream_kind, "kept_as_ingredient": None},
            "synthid": {"status": "unknown", "statement": None, "location": None},
            "soft_binding": {"present": False, "note": "the signed file was erased"},
            "sb942": latent_disclosure(None),
        }
    result = verify_image(data, mime, anchors_pem)
    store = read_manifest_store(data, mime, anchors_pem)
    parent = next(
        (
            link
            for link in result.ingredients
            if link.depth == 1 and link.relationship == "parentOf" and link.has_manifest
        ),
        None,
    )
    kept: bool | None = None
    if upstream_kind == "provider":
        kept = parent is not None  # the signer judged them the provider's when it signed
    return {
        "file_available": True,
        "c2pa": {
            "present": result.state != "none",
            "state": result.state,
            "manifest_label": result.manifest_label,
            "signer": result.signer,
            "reasons": result.reasons,
        },
        "upstream_credentials": {
            "carried": upstream_kind,
            "kept_as_ingredient": kept,
            "ingredient": (
                {"title": parent.title, "manifest": parent.manifest, "state": parent.state}
                if parent is not None and kept
                else None
            ),
        },
        "synthid": _synthid(result.custody, result.manifest_label),
        "soft_binding": _soft_binding(store),
        "sb942": latent_disclosure(store),
    }


def missing_of(marking: dict[str, Any], disclosure: dict[str, Any]) -> list[str]:
    """The required markings (``REQUIRED``) this output lacks."""
    missing = []
    if marking["c2pa"]["state"] != "Trusted":
        missing.append("c2pa_manifest")
    for name in ("provider", "system", "time", "identifier"):
        if not marking["sb942"][name]["present"]:
            missing.append(f"sb942_{name}")
    if disclosure.get("category") not in DISCLOSURE_CATEGORIES:
        missing.append("ai_act_disclosure")
    if marking["upstream_credentials"]["kept_as_ingredient"] is False:
        missing.append("upstream_credentials")
    if not marking["soft_binding"]["present"]:  # the fingerprint that survives stripping
        missing.append("soft_binding")
    return missing


@dataclass(frozen=True)
class OutputRow:
    image_id: int
    turn_id: str
    tenant: str
    created_ms: int
    mime_type: str
    upstream_sha256: str
    signed_sha256: str | None
    manifest_sha256: str | None


_OUTPUT_COLUMNS = (
    TURN_IMAGES.c.id,
    TURN_IMAGES.c.turn_id,
    TURNS.c.tenant,
    TURNS.c.created_ms,
    TURN_IMAGES.c.mime_type,
    TURN_IMAGES.c.sha256,
    TURN_IMAGES.c.signed_sha256,
    TURN_IMAGES.c.manifest_sha256,
)


def _outputs(engine: Engine, conds: list[Any], *, limit: int) -> list[OutputRow]:
    i, t = TURN_IMAGES.c, TURNS.c
    query = (
        select(*_OUTPUT_COLUMNS)
        .select_from(TURN_IMAGES.join(TURNS, t.turn_id == i.turn_id))
        .where(i.direction == "output", *conds)
        .order_by(t.created_ms.desc(), i.turn_id.desc(), i.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [OutputRow(*row) for row in conn.execute(query)]


def _disclosure(entries: list[Any]) -> dict[str, Any]:
    """The AI Act category from the turn's last ``policy.decided`` that assigned one."""
    for e in reversed(entries):
        if e.event.type != "policy.decided":
            continue
        category = (e.event.body.get("obligations") or {}).get("disclosure")
        if category is not None:
            return {
                "category": category,
                "ledger_index": e.index,
                "stage": e.event.body.get("stage"),
                "bundle_revision": e.event.body.get("bundle_revision"),
            }
    return {"category": None, "note": "the policy that decided this turn assigned no category"}


def record_of(sources: RecordSources, row: OutputRow) -> dict[str, Any]:
    entries = sources.ledger.entries_for_turn(row.turn_id)
    signed = next(
        (
            e
            for e in entries
            if e.event.type == "output.signed"
            and e.event.body.get("signed_sha256") == row.signed_sha256
        ),
        None,
    )
    body = signed.event.body if signed is not None else {}
    data = sources.commitments.open(body["signed_file"]) if body.get("signed_file") else None
    marking = marking_of(
        data, row.mime_type, sources.anchors_pem, str(body.get("upstream_credentials", "none"))
    )
    disclosure = _disclosure(entries)
    missing = missing_of(marking, disclosure)
    return {
        "turn_id": row.turn_id,
        "tenant": row.tenant,
        "created_ms": row.created_ms,
        "output": {
            "mime_type": row.mime_type,
            "upstream_sha256": row.upstream_sha256,
            "signed_sha256": row.signed_sha256,
            "manifest_sha256": row.manifest_sha256,
            "ledger_index": signed.index if signed is not None else None,
        },
        "marking": marking,
        "ai_act": disclosure,
        "required": list(REQUIRED),
        "missing": missing,
        "complete": not missing,
        "ledger_indexes": [e.index for e in entries],
    }


def compliance_record(
    sources: RecordSources, sha256: str, *, tenant: str | None
) -> dict[str, Any] | None:
    """The record of the output with this hash (signed, or as the upstream made it) in
    ``tenant`` (None: any); None when there is none there."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise QueryError("sha256 must be 64 lowercase hexadecimal digits")
    i = TURN_IMAGES.c
    conds: list[Any] = [or_(i.signed_sha256 == sha256, i.sha256 == sha256)]
    if tenant is not None:
        conds.append(TURNS.c.tenant == tenant)
    rows = _outputs(sources.engine, conds, limit=1)
    return record_of(sources, rows[0]) if rows else None


@dataclass(frozen=True)
class MissingFilter:
    tenant: str | None
    since_ms: int | None = None
    until_ms: int | None = None


def missing_marking(
    sources: RecordSources, flt: MissingFilter, *, cursor: str | None = None, limit: int = 50
) -> Page:
    """Outputs lacking any required marking, newest first. Reads ``limit`` outputs per call
    (each is verified from its file) and returns those missing something, with a cursor to
    go on while older outputs remain."""
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be from 1 to {MAX_LIMIT}; got {limit}")
    t, i = TURNS.c, TURN_IMAGES.c
    conds: list[Any] = []
    if flt.tenant is not None:
        conds.append(t.tenant == flt.tenant)
    if flt.since_ms is not None:
        conds.append(t.created_ms >= flt.since_ms)
    if flt.until_ms is not None:
        conds.append(t.created_ms < flt.until_ms)
    if cursor:
        key = parse_cursor("missing-marking", flt, cursor)
        conds.append(tuple_(t.created_ms, i.turn_id, i.id) < tuple_(*key))
    rows = _outputs(sources.engine, conds, limit=limit)
    found = [r for r in (record_of(sources, row) for row in rows) if r["missing"]]
    nxt = None
    if len(rows) == limit:
        last = rows[-1]
        nxt = format_cursor("missing-marking", flt, [last.created_ms, last.turn_id, last.image_id])
    return Page(found, nxt)
