"""The values provenance works with: what a manifest says about a turn, and what signing made.

Data only (it imports no c2pa and no other provenance module), so the signer, the manifest
definition and verification all depend on it and none of them on each other in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from governance.upstream.identity import UpstreamIdentity

# The label of Custody's own assertion in every manifest it signs.
ASSERTION_LABEL = "com.custody.turn"


class ProvenanceError(RuntimeError):
    """An output could not be signed; the message says which input or step and why."""


Role = Literal["parent", "reference", "mask", "history"]
# Whose Content Credentials an image carried: "none"; "custody" (an earlier Custody output,
# verified as ours); "provider" (the upstream's own, on its output); "input" (an upstream output
# carrying an input's credentials: an echo); "other" (an input's, signed by someone else).
CredentialsKind = Literal["none", "custody", "provider", "input", "other"]


@dataclass(frozen=True)
class InputImage:
    """One image the caller sent with the turn (bytes as received)."""

    data: bytes
    mime_type: str
    sha256: str
    role: Role
    title: str


@dataclass(frozen=True)
class Approval:
    """One reviewer's approval of a held turn, as the manifest states it.

    ``reviewer`` is the reviewer as the policy's ``reviewer_identity`` allows (``identity``:
    a name, ``key:<key id>`` or a salted commitment); ``shown`` is what the reviewer was shown
    (commitments to the request, prompt, inputs and masks; the SHA-256 of each held output as
    the upstream returned it) and ``shown_digest`` its RFC 8785 digest, which the decision's
    ledger entry (``ledger_index``, a ``review.decided``) carries too."""

    reviewer: str
    identity: str
    group: str
    decision_id: str
    time_ms: int
    task: str
    stage: str
    turn: str  # the turn the task held
    shown: dict[str, Any]
    shown_digest: str
    ledger_index: int | None


@dataclass(frozen=True)
class ProvenanceContext:
    """Everything one turn's manifests say (the same for every output of the turn)."""

    turn_id: str
    tenant: str
    actor: str
    model: str
    model_version: str
    is_emulator: (
        bool  # the configured emulator flag (the built-in emulator, or CUSTODY_EMULATOR=on)
    )
    upstream: UpstreamIdentity  # who answered, from the endpoint and the modelVersion
    inputs: list[InputImage]
    prompt_commitment: str | None
    prompt_text: str | None  # set only when policy disclosed the prompt
    mask_commitments: list[str]
    policy: dict[str, Any]
    approvals: list[Approval]
    ledger_ref: dict[str, Any]
    gateway_version: str
    training_mining: str = "notAllowed"
    thumbnails: bool = False
    # The output's place in its session (session, image, version, parent_version, kind,
    # intent): one context per output image when the turn belongs to a session.
    lineage: dict[str, Any] | None = None


@dataclass(frozen=True)
class IngredientState:
    """What the signer found about one ingredient when it signed."""

    title: str
    relationship: str  # "parentOf" | "inputTo"
    role: str  # an InputImage role, or "upstream-output"
    state: str  # "none" (no Content Credentials) | "Trusted" | "Valid" | "Invalid" | "not added"
    reasons: tuple[str, ...] = ()
    credentials: CredentialsKind = "none"
    custody_turn: str | None = None  # the earlier turn, when credentials == "custody"
    also_input: str | None = None  # the role of a turn input with the same bytes, merged into this


@dataclass(frozen=True)
class SignedOutput:
    """A signed file as released, and the manifest store c2pa embedded in it."""

    data: bytes
    mime_type: str
    sha256: str  # of ``data``
    manifest: bytes
    manifest_sha256: str
    upstream_had_credentials: bool  # the provider's own credentials, and only those
    upstream_credentials: CredentialsKind = "none"  # what the upstream output carried
    ingredient_states: list[IngredientState] = field(default_factory=list)
