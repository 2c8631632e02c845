"""Sign released images with C2PA Content Credentials (c2pa-python, i.e. c2pa-rs).

The output bytes are signed as they came from the upstream — never decoded or re-encoded. When the
upstream's output already carries Content Credentials (Google embeds them in some Gemini outputs),
that exact output becomes the ``parentOf`` ingredient, so its manifest is kept and validated.

Keys: a ``KeyBackend`` makes c2pa signers. ``FileKeyBackend`` reads PEM files (the development PKI
by default); ``CallbackBackend`` calls a function that signs bytes, so the key can live in a KMS or
HSM — it is given the bytes to sign and returns the ES256 signature.
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

if TYPE_CHECKING:
    from governance.settings import Settings


@dataclass(frozen=True)
class InputImage:
    data: bytes
    mime_type: str
    sha256: str
    role: Literal["parent", "reference", "mask", "history"]
    title: str


@dataclass(frozen=True)
class Approval:
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
    prompt_text: str | None
    mask_commitments: list[str]
    policy: dict[str, Any]
    approvals: list[Approval]
    ledger_ref: dict[str, Any]
    gateway_version: str
    training_mining: str = "notAllowed"
    thumbnails: bool = False


@dataclass(frozen=True)
class SignedOutput:
    data: bytes  # the signed file, as released
    mime_type: str
    sha256: str
    manifest: bytes  # the manifest store c2pa embedded
    manifest_sha256: str
    upstream_had_credentials: bool
    ingredient_notes: list[str] = field(default_factory=list)


class KeyBackend(Protocol):
    """Makes c2pa signers for one signing identity."""

    chain_pem: bytes

    def make_signer(self) -> c2pa.Signer: ...


class FileKeyBackend:
    """A PEM certificate chain (end-entity first) and a PEM private key, ES256."""

    def __init__(self, chain_pem: bytes, key_pem: bytes, tsa_url: str = "") -> None:
        self.chain_pem = chain_pem
        self.key_pem = key_pem
        self.tsa_url = tsa_url or None

    def make_signer(self) -> c2pa.Signer:
        info = c2pa.C2paSignerInfo(
            c2pa.C2paSigningAlg.ES256, self.chain_pem, self.key_pem, self.tsa_url
        )
        return c2pa.Signer.from_info(info)


SignCallback = Callable[[bytes], bytes]


class CallbackBackend:
    """Signing through a callback (KMS/HSM): ``callback(data) -> ES256 signature``."""

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

    C2PA's COSE signatures carry ECDSA as raw ``r || s``, so the DER signature is converted.
    """
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the signing key is not an EC key")

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def load_callback(spec: str) -> SignCallback:
    """``module:function`` → the function (it may also be a factory taking no arguments)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"CUSTODY_SIGNING_CALLBACK must be 'module:function', not {spec!r}")
    fn = getattr(importlib.import_module(module_name), attr)
    return fn  # type: ignore[no-any-return]


def _context(anchors_pem: str, thumbnails: bool) -> c2pa.Context:
    settings: dict[str, Any] = {
        "verify": {"remote_manifest_fetch": False, "verify_trust": True},
        "builder": {"thumbnail": {"enabled": thumbnails}},
    }
    if anchors_pem:
        settings["trust"] = {"user_anchors": anchors_pem}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


class OutputSigner:
    """Signs every output image of a turn; safe to call from many threads."""

    def __init__(self, backend: KeyBackend, anchors_pem: str, *, development: bool) -> None:
        self.backend = backend
        self.anchors_pem = anchors_pem
        self.development = development
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputSigner:
        development = settings.signing_cert_file is None
        if development:
            pki = ensure_dev_pki(settings.data_dir / "pki")
            chain, key_file, anchors = pki.signer_chain.read_bytes(), pki.signer_key, None
            anchors_pem = pki.root_cert.read_text()
        else:
            assert settings.signing_cert_file is not None
            chain = Path(settings.signing_cert_file).read_bytes()
            key_file = Path(settings.signing_key_file) if settings.signing_key_file else None
            anchors = settings.trust_anchors_file
            anchors_pem = Path(anchors).read_text() if anchors else ""
        if settings.trust_anchors_file and development:
            anchors_pem += Path(settings.trust_anchors_file).read_text()
        backend: KeyBackend
        if settings.signing_callback:
            backend = CallbackBackend(
                chain, load_callback(settings.signing_callback), settings.tsa_url
            )
        elif key_file is not None:
            backend = FileKeyBackend(chain, key_file.read_bytes(), settings.tsa_url)
        else:
            raise ValueError("set CUSTODY_SIGNING_KEY_FILE or CUSTODY_SIGNING_CALLBACK")
        return cls(backend, anchors_pem, development=development)

    def trust_anchors_pem(self) -> str:
        return self.anchors_pem

    def _thread_state(self, thumbnails: bool) -> tuple[c2pa.Context, c2pa.Signer]:
        key = "thumbs" if thumbnails else "plain"
        state = getattr(self._local, key, None)
        if state is None:
            state = (_context(self.anchors_pem, thumbnails), self.backend.make_signer())
            setattr(self._local, key, state)
        return state  # type: ignore[no-any-return]

    def sign_output(self, data: bytes, mime_type: str, ctx: ProvenanceContext) -> SignedOutput:
        """Sign one output image exactly as the upstream returned it."""
        context, signer = self._thread_state(ctx.thumbnails)
        upstream_credentials = _has_manifest(data, mime_type, context)
        notes: list[str] = []
        ingredients: list[tuple[dict[str, Any], str, bytes]] = []
        parent_label: str | None = None
        if upstream_credentials:
            parent_label = "upstream-output"
            ingredients.append(
                (
                    {
                        "title": "model output (with the provider's Content Credentials)",
                        "relationship": "parentOf",
                        "label": parent_label,
                    },
                    mime_type,
                    data,
                )
            )
        for n, img in enumerate(ctx.inputs):
            is_parent = img.role == "parent" and parent_label is None
            label = f"input-{n + 1}"
            relationship = "parentOf" if is_parent else "inputTo"
            if is_parent:
                parent_label = label
            ingredients.append(
                (
                    {
                        "title": f"{img.role}: {img.title}",
                        "relationship": relationship,
                        "label": label,
                    },
                    img.mime_type,
                    img.data,
                )
            )
        definition = manifest_definition(
            ctx, mime_type, parent_label=parent_label, upstream_credentials=upstream_credentials
        )
        builder = c2pa.Builder.from_json(definition, context=context)
        try:
            for ingredient, fmt, blob in ingredients:
                try:
                    builder.add_ingredient(ingredient, fmt, io.BytesIO(blob))
                except c2pa.C2paError as exc:
                    notes.append(f"{ingredient['title']}: not added as an ingredient ({exc})")
            out = io.BytesIO()
            manifest = builder.sign(signer, mime_type, io.BytesIO(data), out)
        finally:
            builder.close()
        signed = out.getvalue()
        return SignedOutput(
            data=signed,
            mime_type=mime_type,
            sha256=hashlib.sha256(signed).hexdigest(),
            manifest=bytes(manifest),
            manifest_sha256=hashlib.sha256(manifest).hexdigest(),
            upstream_had_credentials=upstream_credentials,
            ingredient_notes=notes,
        )


def _may_carry_manifest(data: bytes, mime_type: str) -> bool:
    """Whether the file has a place a C2PA manifest lives, found by walking its structure
    (PNG chunks, JPEG segments before the scan, RIFF chunks) instead of scanning every byte."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        pos = 8
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos : pos + 4], "big")
            ctype = data[pos + 4 : pos + 8]
            if ctype == b"caBX":
                return True
            if ctype == b"IEND":
                return False
            pos += 12 + length
        return False
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xDA:  # start of scan: no more metadata segments
                return False
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xEB and b"c2pa" in data[pos : pos + 2 + length]:
                return True
            pos += 2 + length
        return False
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        pos = 12
        while pos + 8 <= len(data):
            if data[pos : pos + 4] == b"C2PA":
                return True
            length = int.from_bytes(data[pos + 4 : pos + 8], "little")
            pos += 8 + length + (length & 1)
        return False
    return b"c2pa" in data  # other formats: look everywhere


def _has_manifest(data: bytes, mime_type: str, context: c2pa.Context) -> bool:
    if not _may_carry_manifest(data, mime_type):
        return False
    try:
        reader = c2pa.Reader.try_create(mime_type, io.BytesIO(data), context=context)
    except c2pa.C2paError:
        return True  # a manifest is there even if it does not validate
    if reader is None:
        return False
    reader.close()
    return True
