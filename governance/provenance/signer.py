"""Sign released images with C2PA Content Credentials (c2pa-python, i.e. c2pa-rs).

The output bytes are signed as they came from the upstream — never decoded or re-encoded. When the
upstream's output already carries Content Credentials (Google embeds them in some Gemini outputs),
that exact output becomes the ``parentOf`` ingredient, so its manifest is kept and validated.

Whose credentials they are is decided from what verifies, not from a label: a manifest is Custody's
own only when it carries the ``com.custody.turn`` assertion, validates as Trusted under our anchors
and was signed by our signing certificate (serial and name). Such an image — an earlier Custody
output in a chat, or echoed back by an upstream — is an "earlier Custody output", never "the
provider's". An upstream output byte-identical to an input of the turn is one ingredient, not two.

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
from typing import TYPE_CHECKING, Any, Protocol

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from governance.provenance.credentials import carries_content_credentials
from governance.provenance.manifest import manifest_definition
from governance.provenance.pki import ensure_dev_pki
from governance.provenance.types import (
    CredentialsKind,
    IngredientState,
    ProvenanceContext,
    ProvenanceError,
    SignedOutput,
)
from governance.provenance.verify import VerifyResult, verify_image

if TYPE_CHECKING:
    from governance.settings import Settings


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


def _signer_identity(chain_pem: bytes) -> tuple[str, str | None]:
    """The end-entity certificate's serial (decimal, as c2pa reports it) and common name."""
    cert = x509.load_pem_x509_certificates(chain_pem)[0]
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cert.serial_number), (str(names[0].value) if names else None)


@dataclass
class _Plan:
    """Ingredients of one output: JSON-only ones (no credentials) and ones added from bytes."""

    json_ingredients: list[dict[str, Any]] = field(default_factory=list)
    from_bytes: list[tuple[dict[str, Any], str, bytes]] = field(default_factory=list)
    states: list[IngredientState] = field(default_factory=list)
    parent_label: str | None = None


def _turn_of(found: VerifyResult) -> str | None:
    turn = (found.custody or {}).get("turn_id")
    return str(turn) if turn is not None else None


class OutputSigner:
    """Signs every output image of a turn; safe to call from many threads at once."""

    def __init__(self, backend: KeyBackend, anchors_pem: str, *, development: bool) -> None:
        self.backend = backend
        self.anchors_pem = anchors_pem
        self.development = development
        self._local = threading.local()
        self._own_serial, self._own_name = _signer_identity(backend.chain_pem)

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

    def is_own_manifest(self, found: VerifyResult) -> bool:
        """Whether the active manifest is Custody's own: our assertion, Trusted, our certificate.

        The label alone proves nothing (anyone can write ``com.custody.turn``); the validation
        state and the signing certificate do.
        """
        return (
            found.state == "Trusted"
            and found.custody is not None
            and found.signer_serial == self._own_serial
            and (self._own_name is None or found.signer_common_name == self._own_name)
        )

    def _credentials(self, data: bytes, mime_type: str) -> VerifyResult | None:
        """The validation of ``data``'s Content Credentials; None when it carries none."""
        if not carries_content_credentials(data):
            return None
        found = verify_image(data, mime_type, self.anchors_pem)
        return None if found.state == "none" else found

    def _upstream_kind(
        self, found: VerifyResult, inputs: list[VerifyResult | None]
    ) -> CredentialsKind:
        if self.is_own_manifest(found):
            return "custody"
        if found.manifest_label and any(
            f is not None and f.manifest_label == found.manifest_label for f in inputs
        ):
            return "input"
        return "provider"

    def _upstream_title(
        self, kind: CredentialsKind, found: VerifyResult, ctx: ProvenanceContext
    ) -> str:
        if kind == "custody":
            return f"earlier Custody output (turn {_turn_of(found)})"
        if kind == "input":
            return "model output (with Content Credentials copied from an input of this turn)"
        if ctx.upstream.is_google:
            return "model output (with the provider's Content Credentials)"
        return f"model output (with Content Credentials from the upstream {ctx.upstream.host})"

    def _plan(
        self, data: bytes, mime_type: str, ctx: ProvenanceContext
    ) -> tuple[_Plan, CredentialsKind]:
        plan = _Plan()
        inputs_found = [self._credentials(img.data, img.mime_type) for img in ctx.inputs]
        found = self._credentials(data, mime_type)
        kind: CredentialsKind = "none"
        merged: int | None = None
        if found is not None:
            kind = self._upstream_kind(found, inputs_found)
            # The upstream returned one of the inputs unchanged: one ingredient, not two.
            merged = next((n for n, img in enumerate(ctx.inputs) if img.data == data), None)
            plan.parent_label = "upstream-output"
            title = self._upstream_title(kind, found, ctx)
            if merged is not None and kind != "custody":
                img = ctx.inputs[merged]
                title = f"{img.role}: {img.title}, returned unchanged by the upstream"
            plan.from_bytes.append(
                (
                    {"title": title, "relationship": "parentOf", "label": plan.parent_label},
                    mime_type,
                    data,
                )
            )
            plan.states.append(
                IngredientState(
                    title,
                    "parentOf",
                    "upstream-output",
                    found.state,
                    tuple(found.reasons),
                    credentials=kind,
                    custody_turn=_turn_of(found) if kind == "custody" else None,
                    also_input=ctx.inputs[merged].role if merged is not None else None,
                )
            )
        for n, (img, seen) in enumerate(zip(ctx.inputs, inputs_found, strict=True)):
            if n == merged:
                continue
            is_parent = img.role == "parent" and plan.parent_label is None
            label = f"input-{n + 1}"
            relationship = "parentOf" if is_parent else "inputTo"
            if is_parent:
                plan.parent_label = label
            if seen is None:
                # No Content Credentials: described, not read — c2pa never touches the pixels.
                title = f"{img.role}: {img.title}"
                ingredient = {"title": title, "relationship": relationship, "label": label}
                plan.json_ingredients.append({**ingredient, "format": img.mime_type})
                plan.states.append(IngredientState(title, relationship, img.role, "none"))
                continue
            own = self.is_own_manifest(seen)
            turn = _turn_of(seen) if own else None
            what = f"earlier Custody output (turn {turn})" if own else img.title
            title = f"{img.role}: {what}"
            ingredient = {"title": title, "relationship": relationship, "label": label}
            plan.from_bytes.append((ingredient, img.mime_type, img.data))
            plan.states.append(
                IngredientState(
                    title,
                    relationship,
                    img.role,
                    seen.state,
                    tuple(seen.reasons),
                    credentials="custody" if own else "other",
                    custody_turn=turn,
                )
            )
        return plan, kind

    def sign_output(
        self,
        data: bytes,
        mime_type: str,
        ctx: ProvenanceContext,
        *,
        soft_binding: str | None = None,
    ) -> SignedOutput:
        """Sign one output image exactly as the upstream returned it; ``soft_binding`` is its
        ISCC Image-Code, written as the manifest's ``c2pa.soft-binding`` assertion."""
        plan, upstream_kind = self._plan(data, mime_type, ctx)
        context, signer = self._thread_state(ctx.thumbnails, bool(plan.from_bytes))
        definition = manifest_definition(
            ctx,
            mime_type,
            ingredients=plan.json_ingredients,
            parent_label=plan.parent_label,
            upstream_credentials=upstream_kind == "provider",
            upstream_credentials_kind=upstream_kind,
            soft_binding=soft_binding,
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
            upstream_had_credentials=upstream_kind == "provider",
            upstream_credentials=upstream_kind,
            ingredient_states=states,
        )
