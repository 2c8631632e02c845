"""Verify any image's Content Credentials: state, status codes in plain words, ingredient chain.

``verify_image`` uses c2pa-rs (through c2pa-python) with the configured trust anchors and no
network; ``verify_independently`` asks a second C2PA implementation with its own core
(encypher-c2pa), so a claim does not rest on the library that signed it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import c2pa

from governance.provenance.manifest import ASSERTION_LABEL

PLAIN_WORDS = {
    "assertion.dataHash.mismatch": "the image's bytes were changed after it was signed",
    "assertion.boxesHash.mismatch": "the image's bytes were changed after it was signed",
    "assertion.bmffHash.mismatch": "the image's bytes were changed after it was signed",
    "assertion.hashedURI.mismatch": "an assertion of the manifest was changed after signing",
    "claimSignature.mismatch": "the claim's signature does not match the claim",
    "signingCredential.untrusted": "the signer's certificate does not chain to a trusted anchor",
    "signingCredential.expired": "the signer's certificate had expired when it signed",
    "signingCredential.revoked": "the signer's certificate was revoked",
    "signingCredential.invalid": "the signer's certificate is not valid for C2PA signing",
    "signingCredential.trusted": "the signer's certificate chains to a trusted anchor",
    "claimSignature.validated": "the claim's signature is valid",
    "assertion.dataHash.match": "the image's bytes are exactly those that were signed",
    "ingredient.manifest.mismatch": "an ingredient's manifest does not match its reference",
    "manifest.inaccessible": "a referenced manifest cannot be read",
}
_BENIGN_INGREDIENT_FAILURES = {"signingCredential.untrusted", "signingCredential.ocsp.unknown"}


@dataclass
class VerifyResult:
    state: str  # "Trusted" | "Valid" | "Invalid" | "none"
    codes: list[dict[str, str]] = field(default_factory=list)  # failures first
    custody: dict[str, Any] | None = None
    ingredients: list[dict[str, Any]] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)
    signer: str | None = None
    error: str | None = None

    @property
    def reasons(self) -> list[str]:
        return [c["plain"] for c in self.codes if c["kind"] == "failure"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reasons": self.reasons,
            "codes": self.codes,
            "signer": self.signer,
            "custody": self.custody,
            "ingredients": self.ingredients,
            "thumbnails": self.thumbnails,
            "error": self.error,
        }


def sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypheic", b"ftypmif1", b"ftypheix"):
        return "image/heic"
    return "application/octet-stream"


def _codes(results: dict[str, Any] | None) -> list[dict[str, str]]:
    out = []
    for kind in ("failure", "informational", "success"):
        for item in (results or {}).get(kind) or []:
            code = str(item.get("code", ""))
            out.append(
                {
                    "kind": kind,
                    "code": code,
                    "plain": PLAIN_WORDS.get(code, str(item.get("explanation") or code)),
                    "url": str(item.get("url", "")),
                }
            )
    return out


def _context(anchors_pem: str) -> c2pa.Context:
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "verify_trust": True}}
    if anchors_pem:
        settings["trust"] = {"user_anchors": anchors_pem}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


def verify_image(data: bytes, mime_type: str | None, anchors_pem: str) -> VerifyResult:
    """The C2PA validation of ``data`` under ``anchors_pem`` (offline)."""
    mime = mime_type or sniff_mime(data)
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=_context(anchors_pem))
    except c2pa.C2paError as exc:
        return VerifyResult(
            "Invalid",
            error=f"the Content Credentials cannot be read: {exc}",
            codes=[
                {
                    "kind": "failure",
                    "code": "manifest.unreadable",
                    "plain": f"the manifest cannot be read ({exc})",
                    "url": "",
                }
            ],
        )
    if reader is None:
        return VerifyResult("none")
    try:
        store = json.loads(reader.json())
        state = reader.get_validation_state() or "Invalid"
    finally:
        reader.close()
    active_label = store.get("active_manifest")
    manifest = (store.get("manifests") or {}).get(active_label) or {}
    results = store.get("validation_results") or {}
    codes = _codes(results.get("activeManifest"))
    if any(c["kind"] == "failure" for c in codes) and state != "Invalid":
        untrusted_only = all(
            c["code"] == "signingCredential.untrusted" for c in codes if c["kind"] == "failure"
        )
        state = "Valid" if untrusted_only else "Invalid"
    custody = None
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") == ASSERTION_LABEL:
            custody = assertion.get("data")
    thumbnails = []
    if manifest.get("thumbnail"):
        thumbnails.append("the image's own thumbnail")
    ingredients = []
    manifests = store.get("manifests") or {}
    for ing in manifest.get("ingredients") or []:
        failures = _ingredient_failures(ing)
        has_manifest = bool(ing.get("active_manifest"))
        bad = [c for c in failures if c["code"] not in _BENIGN_INGREDIENT_FAILURES]
        bad += _nested_failures(manifests, ing.get("active_manifest"), depth=0)
        thumb = ing.get("thumbnail") or {}
        if thumb and active_label and str(active_label) in str(thumb.get("identifier", "")):
            thumbnails.append(f"a thumbnail of ingredient {ing.get('title')!r}")
        ingredients.append(
            {
                "title": ing.get("title"),
                "relationship": ing.get("relationship"),
                "format": ing.get("format"),
                "has_manifest": has_manifest,
                "valid": has_manifest and not bad,
                "state": (
                    "no Content Credentials"
                    if not has_manifest
                    else ("Invalid" if bad else ("Valid" if failures else "Trusted"))
                ),
                "reasons": [c["plain"] for c in bad],
                "signer": (
                    (store.get("manifests") or {})
                    .get(ing.get("active_manifest"), {})
                    .get("signature_info", {})
                    .get("issuer")
                    if has_manifest
                    else None
                ),
            }
        )
    signer = (manifest.get("signature_info") or {}).get("issuer")
    return VerifyResult(state, codes, custody, ingredients, thumbnails, signer)


def _ingredient_failures(ing: dict[str, Any]) -> list[dict[str, str]]:
    """Failure codes recorded for one ingredient (C2PA 2.x results or 1.x status list)."""
    codes = _codes((ing.get("validation_results") or {}).get("activeManifest"))
    failures = [c for c in codes if c["kind"] == "failure"]
    for item in ing.get("validation_status") or []:
        code = str(item.get("code", ""))
        if not code.endswith((".validated", ".match", ".trusted", ".insideValidity")):
            plain = PLAIN_WORDS.get(code, str(item.get("explanation") or code))
            failures.append({"kind": "failure", "code": code, "plain": plain, "url": ""})
    return failures


def _nested_failures(manifests: dict[str, Any], label: Any, depth: int) -> list[dict[str, str]]:
    """Failures anywhere below an ingredient's manifest: an invalid ancestor taints the chain."""
    manifest = manifests.get(label) if label else None
    if not manifest or depth > 16:
        return []
    out = []
    for ing in manifest.get("ingredients") or []:
        for c in _ingredient_failures(ing):
            if c["code"] not in _BENIGN_INGREDIENT_FAILURES:
                out.append({**c, "plain": f"its ingredient {ing.get('title')!r}: {c['plain']}"})
        out += _nested_failures(manifests, ing.get("active_manifest"), depth + 1)
    return out


@dataclass(frozen=True)
class IndependentResult:
    ok: bool
    integrity: str
    trust: str
    failures: list[str]


def verify_independently(data: bytes, mime_type: str | None, anchors_pem: str) -> IndependentResult:
    """The verdict of encypher-c2pa (its own C2PA core), trusting only ``anchors_pem``."""
    import encypher_c2pa

    report = encypher_c2pa.verify(
        data, mime_type or sniff_mime(data), trust_pem=anchors_pem, no_default_trust=True
    )
    integrity = str(report.get("integrity"))
    trust = str((report.get("trust") or {}).get("status"))
    failures = [
        str(f.get("code")) for f in (report.get("validation_results") or {}).get("failure") or []
    ]
    ok = integrity == "valid" and trust in ("valid_for_supplied_material", "trusted", "valid")
    return IndependentResult(ok, integrity, trust, failures)
