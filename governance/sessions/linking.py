"""Which session and version a turn belongs to.

A Gemini chat resends its whole history each turn, and the images in it are the files Custody
released (signed, so each is unique to its turn). A turn is attached by those hashes, always
within the caller's tenant and actor:

- ``x-custody-session`` names the session explicitly, per actor: its id is derived from the
  tenant, the actor and the key (``keyed_session_id``), so another user's same key names another
  session;
- otherwise the newest session holding one of the request's images *as a Custody output* is the
  turn's session: an upload's hash is never enough, since two chats may start from one public
  image and must not mix;
- no such output: a new session (a chat's first turn).

Inside the session, the turn's parent image (the image it edits) is looked up by hash: an earlier
output — the latest, or an older one when the user went back to it (a branch) — or an upload.
An image the session does not hold yet becomes a new image whose first version is this upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from governance.sessions.lineage import (
    Lineage,
    NewImage,
    Provenance,
    SessionHint,
    keyed_session_id,
    new_id,
)
from storage.sessions import SessionStore

CHAT_SOURCE = "gemini-request"  # an image that arrived inside a Gemini request
GENERATED_SOURCE = "generated"  # an image the model made from text


@dataclass(frozen=True)
class SeenImage:
    """One image of a request, as the linker needs it."""

    sha256: str
    role: str  # parent | reference | mask | history
    commitment: str | None  # committed on receipt (parent, references, masks)
    mime_type: str
    width: int | None
    height: int | None


def _known(store: SessionStore, session_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """The session's versions by the SHA-256 of their bytes (the newest for equal bytes), and
    each version's image."""
    known, images = {}, {}
    for digest, version, image in store.version_digests(session_id):
        known[digest], images[version] = version, image
    return known, images


def link_chat_turn(
    store: SessionStore,
    *,
    tenant: str,
    actor: str,
    client_key: str | None,
    images: list[SeenImage],
) -> Lineage:
    """The lineage of a Gemini-route turn (see the module doc)."""
    session_id: str | None = None
    new_session = False
    if client_key:
        session_id = keyed_session_id(tenant, actor, client_key)
        new_session = store.session(session_id) is None
    else:
        matches = store.versions_by_sha256(tenant, actor, [i.sha256 for i in images])
        outputs = [m for m in matches if m["kind"] != "upload"]
        parent = next((i for i in images if i.role == "parent"), None)
        chosen = next(
            (m for m in outputs if parent is not None and m["sha256"] == parent.sha256),
            outputs[0] if outputs else None,
        )
        session_id = chosen["session_id"] if chosen is not None else None
    if session_id is None:
        session_id, new_session = new_id("ses"), True
    assert session_id is not None
    known, image_of = ({}, {}) if new_session else _known(store, session_id)
    lineage = Lineage(
        session_id=session_id,
        image_id="",
        parent_version=None,
        new_session=new_session,
        client_key=client_key or None,
        known=known,
    )
    parent = next((i for i in images if i.role == "parent"), None)
    if parent is not None and parent.sha256 in known:
        version = known[parent.sha256]
        lineage.image_id, lineage.parent_version = image_of[version], version
        lineage.targets.append(version)
    elif parent is not None and parent.commitment is not None:
        # A new image in this session: its first version is this upload.
        image = NewImage(
            image_id=new_id("img"),
            provenance=Provenance(source=CHAT_SOURCE),
            version_id=new_id("ver"),
            sha256=parent.sha256,
            commitment=parent.commitment,
            mime_type=parent.mime_type,
            width=parent.width,
            height=parent.height,
        )
        lineage.new_image, lineage.image_id = image, image.image_id
        lineage.parent_version = image.version_id
        lineage.targets.append(image.version_id or "")
        lineage.known[parent.sha256] = image.version_id or ""
    else:
        # No parent image the session can hold (text-only generation, or an old history
        # image never committed): the outputs are a new image with no upload version.
        image = NewImage(image_id=new_id("img"), provenance=Provenance(source=GENERATED_SOURCE))
        lineage.new_image, lineage.image_id = image, image.image_id
    if lineage.new_image is None:
        row = store.image(lineage.image_id)
        if row is not None:
            lineage.provenance.append(Provenance.of_row(row))
    else:
        lineage.provenance.append(lineage.new_image.provenance)
    for img in images:
        if img.role == "mask" and img.commitment is not None:
            lineage.masks.append(img.commitment)
        elif img.role == "reference":
            ref = known.get(img.sha256)
            if ref is not None:
                lineage.references.append({"version": ref})
            elif img.commitment is not None:
                lineage.references.append({"content": img.commitment})
    return lineage


def link_hinted_turn(store: SessionStore, hint: SessionHint, images: list[SeenImage]) -> Lineage:
    """The lineage of a native-API turn: what the API resolved, taken as is; its masks are the
    mask images of the request as this turn committed them."""
    return Lineage(
        session_id=hint.session_id,
        image_id=hint.image_id,
        parent_version=hint.target_version,
        kind=hint.kind,
        origin="api",
        intent_id=hint.intent_id,
        targets=[hint.target_version],
        masks=[i.commitment for i in images if i.role == "mask" and i.commitment is not None],
        references=[{"version": v} for v in hint.references],
        provenance=list(hint.provenance),
        known=_known(store, hint.session_id)[0],
    )


def version_facts(row: dict[str, Any]) -> dict[str, Any]:
    """A version as the API shows it."""
    return {k: row[k] for k in ("version_id", "image_id", "parent_version", "kind", "turn_id")}
