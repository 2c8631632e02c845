"""A session's ledger events and index rows, built from the values in ``lineage``.

The events (``session.created``, ``session.image_added``, ``lineage.recorded``,
``version.labelled``) carry every id of the graph — session, image, version, parent, turn,
intent — so ``graph.rebuild_from_ledger`` can rebuild it from the ledger alone; content appears
only as commitments. The rows are the same facts for the index (``storage.schema.sessions``),
committed in the same transaction as the events that state them.
"""

from __future__ import annotations

from typing import Any

from governance.ledger_vocabulary import (
    LineageRecorded,
    SessionCreated,
    SessionImageAdded,
    VersionLabelled,
)
from governance.sessions.lineage import Lineage, NewImage


def session_created_body(origin: str, client_key: str | None) -> SessionCreated:
    return {"origin": origin, "keyed": client_key is not None}


def image_added_body(image: NewImage, turn_id: str | None) -> SessionImageAdded:
    return {
        "turn": turn_id,
        "image": image.image_id,
        "version": image.version_id,
        "content": image.commitment,
        "mime_type": image.mime_type,
        "width": image.width,
        "height": image.height,
        **image.provenance.facts(),  # type: ignore[typeddict-item]
    }


OUTPUTS_PER_EVENT = 100  # a leaf stays far under 64 KiB: a turn of 500 images writes five


def lineage_bodies(lineage: Lineage, turn_id: str, status: str) -> list[LineageRecorded]:
    """The turn's ``lineage.recorded`` bodies: one, or one per slice of its outputs (``part``
    of ``parts``) when it made more than ``OUTPUTS_PER_EVENT`` images."""
    whole = lineage_body(lineage, turn_id, status)
    outputs = whole["outputs"]
    if len(outputs) <= OUTPUTS_PER_EVENT:
        return [whole]
    slices = [outputs[n : n + OUTPUTS_PER_EVENT] for n in range(0, len(outputs), OUTPUTS_PER_EVENT)]
    return [
        {**whole, "outputs": part, "part": n + 1, "parts": len(slices)}
        for n, part in enumerate(slices)
    ]


def lineage_body(lineage: Lineage, turn_id: str, status: str) -> LineageRecorded:
    return {
        "turn": turn_id,
        "kind": lineage.kind,
        "status": status,
        "intent": lineage.intent_id,
        "image": lineage.image_id,
        "targets": list(lineage.targets),
        "masks": list(lineage.masks),
        "references": list(lineage.references),
        "outputs": [
            {
                "version": o.version_id,
                "image": o.image_id,
                "parent": o.parent_version,
                "kind": o.kind,
                "content": o.commitment,
            }
            for o in lineage.outputs
        ],
    }


def label_body(version_id: str, label: str) -> VersionLabelled:
    return {"version": version_id, "label": label}


def session_row(
    session_id: str, *, tenant: str, actor: str, origin: str, client_key: str | None, now: int
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "tenant": tenant,
        "actor": actor,
        "origin": origin,
        "client_key": client_key,
        "title": None,
        "created_ms": now,
    }


def image_row(session_id: str, image: NewImage, now: int) -> dict[str, Any]:
    return {
        "image_id": image.image_id,
        "session_id": session_id,
        **image.provenance.facts(),
        "created_ms": now,
    }


def upload_version_row(
    session_id: str, image: NewImage, *, tenant: str, actor: str, turn: str | None, now: int
) -> dict[str, Any]:
    assert image.version_id and image.sha256 and image.commitment and image.mime_type
    return {
        "version_id": image.version_id,
        "session_id": session_id,
        "image_id": image.image_id,
        "tenant": tenant,
        "actor": actor,
        "parent_version": None,
        "turn_id": turn,
        "kind": "upload",
        "sha256": image.sha256,
        "commitment": image.commitment,
        "mime_type": image.mime_type,
        "width": image.width,
        "height": image.height,
        "created_ms": now,
    }


def turn_rows(
    lineage: Lineage,
    *,
    tenant: str,
    actor: str,
    turn_id: str,
    status: str,
    error: str | None,
    now: int,
) -> dict[str, list[dict[str, Any]]]:
    """Every index row a closing turn writes for its session (a failed turn: its turn and
    items, no output versions)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    if lineage.new_session:
        rows["edit_sessions"] = [
            session_row(
                lineage.session_id,
                tenant=tenant,
                actor=actor,
                origin=lineage.origin,
                client_key=lineage.client_key,
                now=now,
            )
        ]
    versions: list[dict[str, Any]] = []
    image = lineage.new_image
    if image is not None:
        rows["session_images"] = [image_row(lineage.session_id, image, now)]
        if image.version_id is not None:
            versions.append(
                upload_version_row(
                    lineage.session_id, image, tenant=tenant, actor=actor, turn=turn_id, now=now
                )
            )
    for out in lineage.outputs if status == "released" else []:
        versions.append(
            {
                "version_id": out.version_id,
                "session_id": lineage.session_id,
                "image_id": out.image_id,
                "tenant": tenant,
                "actor": actor,
                "parent_version": out.parent_version,
                "turn_id": turn_id,
                "kind": out.kind,
                "sha256": out.sha256,
                "commitment": out.commitment,
                "mime_type": out.mime_type,
                "width": None,
                "height": None,
                "created_ms": now,
            }
        )
    rows["session_versions"] = versions
    rows["session_turns"] = [
        {
            "turn_id": turn_id,
            "session_id": lineage.session_id,
            "actor": actor,
            "kind": lineage.kind,
            "intent_id": lineage.intent_id,
            "status": status,
            "error": error,
            "created_ms": now,
        }
    ]
    items: list[tuple[str, str | None, str | None]] = [
        *(("target", v, None) for v in lineage.targets),
        *(("mask", None, c) for c in lineage.masks),
        *(("reference", r.get("version"), r.get("content")) for r in lineage.references),
        *(
            ("output", o.version_id, o.commitment)
            for o in (lineage.outputs if status == "released" else [])
        ),
    ]
    rows["session_turn_items"] = [
        {"turn_id": turn_id, "role": role, "version_id": v, "commitment": c, "position": n}
        for n, (role, v, c) in enumerate(items)
    ]
    return rows
