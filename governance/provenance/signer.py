"""Sign released images with C2PA Content Credentials (c2pa-python, i.e. c2pa-rs).

The output bytes are signed as they came from the upstream — never decoded or re-encoded. When the
upstream's output already carries Content Credentials (Google embeds them in some Gemini outputs),
that exact output becomes the ``parentOf`` ingredient, so its manifest is kept and validated.

Keys: a ``KeyBackend`` makes c2pa signers. ``FileKeyBackend`` reads PEM files (the development PKI
by default); ``CallbackBackend`` calls a function that signs bytes, so the key can live in a KMS or
HSM — it is given the bytes to sign and returns the ES256 signature (raw ``r || s``).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import c2pa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from governance.provenance.manifest import manifest_definition
from governance.provenance.pki import ensure_dev_pki
from governance.provenance.verify import VerifyResult, may_carry_manifest, verify_image

if TYPE_CHECKING:
    from governance.settings import Settings


class ProvenanceError(RuntimeError):
    """An output could not be signed; the message says which input or step and why."""


Role = Literal["parent", "reference", "mask", "history"]


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
    """One human decision on a held turn; the comment only as a commitment."""

    reviewer: str
    role: str
    decision: str
    time_ms: int
    comment_commitment: str | None


@dataclass(frozen=True)
class ProvenanceContext:
    """Everything one turn's manifests say (the same for every output of the turn)."""

    turn_id: str
    tenant: str
    actor: str
    model: str
    model_version: str
    is_emulator: bool
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


@dataclass(frozen=True)
class IngredientState:
    """What the signer found about one ingredient when it signed."""

    title: str
    relationship: str  # "parentOf" | "inputTo"
    role: str  # an InputImage role, or "upstream-output"
    state: str  # "none" (no Content Credentials) | "Trusted" | "Valid" | "Invalid" | "not added"
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignedOutput:
    """A signed file as released, and the manifest store c2pa embedded in it."""

    data: bytes
    mime_type: str
    sha256: str  # of ``data``
    manifest: bytes
    manifest_sha256: str
    upstream_had_credentials: bool
    ingredient_states: list[IngredientState] = field(default_factory=list)


class KeyBackend(Protocol):
    """Makes c2pa signers for one signing identity (a chain, end-entity first)."""

    chain_pem: bytes

    def make_signer(self) -> c2pa.Signer: ...


class FileKeyBackend:
    """A PEM certificate chain (end-entity first) and a PEM private key, ES256."""

    def __init__(self, chain_pem: bytes, key_pem: bytes, tsa_url: str = "") -> None:
        self.chain_pem = chain_pem
        self._key_pem = key_pem
        self.tsa_url = tsa_url or None

    def make_signer(self) -> c2pa.Signer:
        info = c2pa.C2paSignerInfo(
            c2pa.C2paSigningAlg.ES256, self.chain_pem, self._key_pem, self.tsa_url
        )
        return c2pa.Signer.from_info(info)


SignCallback = Callable[[bytes], bytes]


class CallbackBackend:
    """Signing through a callback (KMS/HSM): ``callback(data) -> raw ES256 signature r || s``."""

    def __init__(self, chain_pem: bytes, callback: SignCallback, tsa_url: str = "") -> None:
        self.chain_pem = chain_pem
        self.callback = callback
        self.tsa_url = tsa_url or None

    def make_signer(self) -> c2pa.Signer:
        return c2pa.Signer.from_callback(
            self.callback, c2pa.C2paSigningAlg.ES256, self.chain_pem.decode(), self.tsa_url
        )


def es256_callback_for_key(key_pem: bytes) -> SignCallback:
    """A signing callback over a local P-256 key: the shape a KMS callback takes.

    C2PA's COSE signatures carry ECDSA as raw ``r || s`` (64 bytes), so the DER signature that
    most KMS and HSM APIs return is converted — a KMS callback must do the same.
    """
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the signing key is not an EC (P-256) key")

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def load_callback(spec: str) -> SignCallback:
    """``module:function`` → that function, which signs bytes and returns ``r || s``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"CUSTODY_SIGNING_CALLBACK must be 'module:function', not {spec!r}")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"CUSTODY_SIGNING_CALLBACK {spec!r}: {attr} is not a function")
    return fn  # type: ignore[no-any-return]


def _signing_context(anchors_pem: str, *, thumbnails: bool, with_trust: bool) -> c2pa.Context:
    # Trust anchors cost about a millisecond per build: only loaded when an ingredient carries
    # Content Credentials whose validation the ingredient assertion records.
    settings: dict[str, Any] = {
        "verify": {"remote_manifest_fetch": False},
        "builder": {"thumbnail": {"enabled": thumbnails}},
    }
    if with_trust and anchors_pem:
        settings["trust"] = {"user_anchors": anchors_pem}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


class _HashingSink(io.BytesIO):
    """The output stream: hashes what c2pa writes while it is hot in cache.

    c2pa writes PNG and JPEG in one forward pass; any out-of-order write (WebP patches its RIFF
    size) falls back to hashing the finished file.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sha = hashlib.sha256()
        self._hashed = 0
        self._in_order = True

    def write(self, b: Any) -> int:
        if self._in_order:
            if self.tell() == self._hashed:
                self._sha.update(b)
                self._hashed += len(b)
            else:
                self._in_order = False
        return super().write(b)

    def sha256_of(self, data: bytes) -> str:
        if self._in_order and self._hashed == len(data):
            return self._sha.hexdigest()
        return hashlib.sha256(data).hexdigest()


@dataclass
class _Plan:
    """Ingredients of one output: JSON-only ones (no credentials) and ones added from bytes."""

    json_ingredients: list[dict[str, Any]] = field(default_factory=list)
    from_bytes: list[tuple[dict[str, Any], str, bytes]] = field(default_factory=list)
    states: list[IngredientState] = field(default_factory=list)
    parent_label: str | None = None


class OutputSigner:
    """Signs every output image of a turn; safe to call from many threads at once."""

    def __init__(self, backend: KeyBackend, anchors_pem: str, *, development: bool) -> None:
        self.backend = backend
        self.anchors_pem = anchors_pem
        self.development = development
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputSigner:
        """The signer the settings describe; the development PKI when no certificate is set."""
        development = settings.signing_cert_file is None
        key_pem: bytes | None = None
        if development:
            pki = ensure_dev_pki(settings.data_dir / "pki")
            chain = pki.signer_chain.read_bytes()
            key_pem = pki.signer_key.read_bytes()
            anchors_pem = pki.root_cert.read_text()
        else:
            assert settings.signing_cert_file is not None
            chain = Path(settings.signing_cert_file).read_bytes()
            if settings.signing_key_file:
                key_pem = Path(settings.signing_key_file).read_bytes()
            anchors_pem = ""
        if settings.trust_anchors_file:
            anchors_pem += Path(settings.trust_anchors_file).read_text()
        backend: KeyBackend
        if settings.signing_callback:
            callback = load_callback(settings.signing_callback)
            backend = CallbackBackend(chain, callback, settings.tsa_url)
        elif key_pem is not None:
            backend = FileKeyBackend(chain, key_pem, settings.tsa_url)
        else:
            raise ValueError(
                "CUSTODY_SIGNING_CERT_FILE is set but neither CUSTODY_SIGNING_KEY_FILE nor"
                " CUSTODY_SIGNING_CALLBACK says how to sign with it"
            )
        return cls(backend, anchors_pem, development=development)

    def trust_anchors_pem(self) -> str:
        """The PEM anchors Custody's own verification trusts (the dev root in development)."""
        return self.anchors_pem

    def _thread_state(self, thumbnails: bool, with_trust: bool) -> tuple[c2pa.Context, c2pa.Signer]:
        # c2pa objects are not shared between threads: each worker thread keeps its own.
        key = f"state_{int(thumbnails)}{int(with_trust)}"
        state: tuple[c2pa.Context, c2pa.Signer] | None = getattr(self._local, key, None)
        if state is None:
            context = _signing_context(
                self.anchors_pem, thumbnails=thumbnails, with_trust=with_trust
            )
            state = (context, self.backend.make_signer())
            setattr(self._local, key, state)
        return state

    def _plan(self, data: bytes, mime_type: str, ctx: ProvenanceContext) -> tuple[_Plan, bool]:
        plan = _Plan()
        upstream_credentials = may_carry_manifest(data)
        if upstream_credentials:
            check = verify_image(data, mime_type, self.anchors_pem)
            upstream_credentials = check.state != "none"
            if upstream_credentials:
                plan.parent_label = "upstream-output"
                title = "model output (with the provider's Content Credentials)"
                plan.from_bytes.append(
                    (
                        {"title": title, "relationship": "parentOf", "label": plan.parent_label},
                        mime_type,
                        data,
                    )
                )
                plan.states.append(
                    IngredientState(
                        title, "parentOf", "upstream-output", check.state, tuple(check.reasons)
                    )
                )
        for n, img in enumerate(ctx.inputs):
            is_parent = img.role == "parent" and plan.parent_label is None
            label = f"input-{n + 1}"
            relationship = "parentOf" if is_parent else "inputTo"
            if is_parent:
                plan.parent_label = label
            title = f"{img.role}: {img.title}"
            ingredient = {"title": title, "relationship": relationship, "label": label}
            found: VerifyResult | None = (
                verify_image(img.data, img.mime_type, self.anchors_pem)
                if may_carry_manifest(img.data)
                else None
            )
            if found is None or found.state == "none":
                # No Content Credentials: described, not read — c2pa never touches the pixels.
                plan.json_ingredients.append({**ingredient, "format": img.mime_type})
                plan.states.append(IngredientState(title, relationship, img.role, "none"))
            else:
                plan.from_bytes.append((ingredient, img.mime_type, img.data))
                plan.states.append(
                    IngredientState(
                        title, relationship, img.role, found.state, tuple(found.reasons)
                    )
                )
        return plan, upstream_credentials

    def sign_output(self, data: bytes, mime_type: str, ctx: ProvenanceContext) -> SignedOutput:
        """Sign one output image exactly as the upstream returned it."""
        plan, upstream_credentials = self._plan(data, mime_type, ctx)
        context, signer = self._thread_state(ctx.thumbnails, bool(plan.from_bytes))
        definition = manifest_definition(
            ctx,
            mime_type,
            ingredients=plan.json_ingredients,
            parent_label=plan.parent_label,
            upstream_credentials=upstream_credentials,
        )
        states = list(plan.states)
        sink = _HashingSink()
        builder = c2pa.Builder.from_json(definition, context=context)
        try:
            for ingredient, fmt, blob in plan.from_bytes:
                try:
                    builder.add_ingredient(ingredient, fmt, io.BytesIO(blob))
                except c2pa.C2paError as exc:
                    # c2pa read these credentials a moment ago; if it cannot embed them, say so
                    # rather than release nothing.
                    raise ProvenanceError(
                        f"ingredient {ingredient['title']!r} carries Content Credentials that"
                        f" c2pa cannot embed: {exc}"
                    ) from exc
            manifest = bytes(builder.sign(signer, mime_type, io.BytesIO(data), sink))
        except c2pa.C2paError as exc:
            raise ProvenanceError(f"signing the {mime_type} output failed: {exc}") from exc
        finally:
            builder.close()
        signed = sink.getvalue()
        return SignedOutput(
            data=signed,
            mime_type=mime_type,
            sha256=sink.sha256_of(signed),
            manifest=manifest,
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
            upstream_had_credentials=upstream_credentials,
            ingredient_states=states,
        )
