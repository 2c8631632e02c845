"""The values of a turn's place in a session. Data only: no I/O, no Custody imports.

A ``SessionHint`` is what the native API knows before a turn runs (the session, the target
version, the mask and references, the shared intent of a linked edit); a ``Lineage`` is what
the pipeline settled for the turn (a hint taken as is, or a chat turn recognised by hashes) and
fills in as it goes: the versions its outputs become.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

CONSENT_VALUES = ("given", "not_required", "refused", "unknown")
KINDS = ("upload", "edit", "rollback")


def new_id(prefix: str) -> str:
    """A fresh id: ``ses_``, ``img_``, ``ver_`` or ``int_`` and 24 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def keyed_session_id(tenant: str, actor: str, key: str) -> str:
    """The session an ``x-custody-session`` key names for one actor: derived, so every turn
    naming it (concurrent ones included) finds the same session without a lookup race, and
    another actor's same key names another session."""
    digest = hashlib.sha256(f"{tenant}\0{actor}\0{key}".encode()).hexdigest()
    return f"ses_{digest[:24]}"


@dataclass(frozen=True)
class Provenance:
    """What the uploader states about an image: the facts policy reads."""

    source: str
    rights_holder: str | None = None
    licence: str | None = None
    identifiable_people: bool | None = None
    consent: str | None = None

    def facts(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rights_holder": self.rights_holder,
            "licence": self.licence,
            "identifiable_people": self.identifiable_people,
            "consent": self.consent,
        }

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Provenance:
        return cls(
            source=row["source"],
            rights_holder=row.get("rights_holder"),
            licence=row.get("licence"),
            identifiable_people=row.get("identifiable_people"),
            consent=row.get("consent"),
        )


@dataclass(frozen=True)
class SessionHint:
    """A native-API turn's place, known before it runs."""

    session_id: str
    image_id: str
    target_version: str
    kind: str = "edit"  # edit | rollback
    intent_id: str | None = None
    references: tuple[str, ...] = ()  # version ids
    provenance: tuple[Provenance, ...] = ()  # of the target's and the references' images


@dataclass
class NewImage:
    """An image a chat turn brought into its session (its first version is an upload, unless
    the model made it from text: then it has no upload version)."""

    image_id: str
    provenance: Provenance
    version_id: str | None = None
    sha256: str | None = None
    commitment: str | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class OutputVersion:
    """The version one output image of the turn becomes."""

    version_id: str
    image_id: str
    parent_version: str | None
    kind: str
    sha256: str = ""  # of the signed file, once signed
    commitment: str = ""
    mime_type: str = ""


@dataclass
class Lineage:
    """A turn's place in a session, settled before its request gate."""

    session_id: str
    image_id: str
    parent_version: str | None
    kind: str = "edit"
    origin: str = "chat"
    intent_id: str | None = None
    new_session: bool = False
    client_key: str | None = None
    new_image: NewImage | None = None
    targets: list[str] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)  # commitments
    references: list[dict[str, str]] = field(default_factory=list)  # {"version"} | {"content"}
    provenance: list[Provenance] = field(default_factory=list)
    known: dict[str, str] = field(default_factory=dict)  # sha256 → version id in the session
    outputs: list[OutputVersion] = field(default_factory=list)

    def output_for(self, upstream_sha256: str) -> OutputVersion:
        """Allocate the version of one output. An output byte-identical to an earlier version
        of the session (a model answering "undo" with an earlier image) is a rollback to that
        version: a branch from it."""
        earlier = self.known.get(upstream_sha256)
        if earlier == self.parent_version:  # the parent returned unchanged: an edit of it
            earlier = None
        out = OutputVersion(
            version_id=new_id("ver"),
            image_id=self.image_id,
            parent_version=earlier or self.parent_version,
            kind="rollback" if earlier is not None or self.kind == "rollback" else "edit",
        )
        self.outputs.append(out)
        return out

    def manifest_facts(self, output: OutputVersion) -> dict[str, Any]:
        """What Custody's assertion says of this output's place in the session."""
        return {
            "session": self.session_id,
            "image": output.image_id,
            "version": output.version_id,
            "parent_version": output.parent_version,
            "kind": output.kind,
            "intent": self.intent_id,
        }
