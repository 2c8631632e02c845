"""Verify any image's Content Credentials: state, status codes in plain words, ingredient chain.

``verify_image`` uses c2pa-rs (through c2pa-python) with the given trust anchors and no network;
``verify_independently`` asks a second C2PA implementation with its own core (encypher-c2pa), so a
claim does not rest on the library that signed it.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import c2pa

from governance.provenance.lineage_chain import lineage_chain
from governance.provenance.types import ASSERTION_LABEL

PLAIN_WORDS = {
    "assertion.dataHash.mismatch": "the image's bytes were changed after it was signed",
    "assertion.boxesHash.mismatch": "the image's bytes were changed after it was signed",
    "assertion.bmffHash.mismatch": "the image's bytes were changed after it was signed",
    "assertion.hashedURI.mismatch": "a statement in the manifest was changed after signing",
    "assertion.missing": "the manifest refers to a statement that is not in the file",
    "claimSignature.mismatch": "the signature does not match what was signed (forged or altered)",
    "claimSignature.missing": "the manifest has no signature",
    "claimSignature.outsideValidity": "it was signed outside its certificate's validity period",
    "signingCredential.untrusted": "the signer's certificate does not chain to a trusted anchor",
    "signingCredential.expired": "the signer's certificate had expired when it signed",
    "signingCredential.revoked": "the signer's certificate was revoked",
    "signingCredential.invalid": "the signer's certificate is not valid for C2PA signing",
    "signingCredential.trusted": "the signer's certificate chains to a trusted anchor",
    "claimSignature.validated": "the signature over the manifest is valid",
    "claimSignature.insideValidity": "it was signed while the certificate was valid",
    "assertion.dataHash.match": "the image's bytes are exactly those that were signed",
    "assertion.hashedURI.match": "a statement in the manifest is unchanged",
    "ingredient.manifest.validated": "an ingredient's credentials match what the signer recorded",
    "ingredient.manifest.mismatch": "an ingredient's credentials differ from what was recorded",
    "ingredient.hashedURI.mismatch": "an ingredient's record was changed after signing",
    "manifest.inaccessible": "a referenced manifest cannot be read",
    "timeStamp.mismatch": "the timestamp does not match the signed data",
    "timeStamp.validated": "the trusted timestamp matches the signature",
    "timeStamp.trusted": "the timestamp authority is trusted",
    "timeStamp.untrusted": "the timestamp authority is not trusted",
}
# An ingredient's signer need not be under *our* anchors: that alone does not make it invalid.
_NOT_A_DEFECT = {"signingCredential.untrusted", "signingCredential.ocsp.unknown"}
_MAX_DEPTH = 32


@dataclass(frozen=True)
class StatusCode:
    """One C2PA validation status code and what it means."""

    kind: str  # "failure" | "informational" | "success"
    code: str
    plain: str
    url: str = ""


@dataclass
class ChainLink:
    """One ingredient in the chain below the active manifest (depth 1 = direct ingredient)."""

    title: str
    relationship: str
    depth: int
    state: str  # "none" (no credentials) | "Trusted" | "Valid" | "Invalid"
    reasons: list[str] = field(default_factory=list)
    signer: str | None = None
    format: str | None = None
    manifest: str | None = None  # the ingredient's manifest label (None: no credentials)
    custody_turn: str | None = None  # the turn, when that manifest has a Custody assertion

    @property
    def has_manifest(self) -> bool:
        return self.state != "none"

    @property
    def valid(self) -> bool:
        """Intact credentials (trusted or not), with no invalid ancestor."""
        return self.state in ("Trusted", "Valid")

    def __getitem__(self, key: str) -> Any:
        # Older callers read links as dicts (``link["relationship"]``).
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "has_manifest": self.has_manifest, "valid": self.valid}


@dataclass
class VerifyResult:
    """The verdict on one file: the state, why, what the manifest says, and its ingredients."""

    state: str  # "Trusted" | "Valid" | "Invalid" | "none"
    codes: list[StatusCode] = field(default_factory=list)
    custody: dict[str, Any] | None = None
    ingredients: list[ChainLink] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)
    signer: str | None = None
    error: str | None = None
    manifest_label: str | None = None  # the active manifest's label
    signer_serial: str | None = None  # the signing certificate's serial number (decimal)
    signer_common_name: str | None = None
    lineage: list[dict[str, Any]] = field(default_factory=list)  # back to the upload

    @property
    def reasons(self) -> list[str]:
        """Each failure, in plain words (an untrusted signer counts: it is why not Trusted)."""
        return [f"{c.plain} ({c.code})" for c in self.codes if c.kind == "failure"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "explanation": STATE_WORDS.get(self.state, self.state),
            "reasons": self.reasons,
            "codes": [asdict(c) for c in self.codes],
            "signer": self.signer,
            "signer_serial": self.signer_serial,
            "manifest_label": self.manifest_label,
            "custody": self.custody,
            "ingredients": [i.to_dict() for i in self.ingredients],
            "thumbnails": self.thumbnails,
            "lineage": self.lineage,
            "error": self.error,
        }


STATE_WORDS = {
    "Trusted": "intact, and signed by a certificate under a trusted anchor",
    "Valid": "intact, but the signer's certificate is not under a trusted anchor",
    "Invalid": "the Content Credentials do not verify: the file or its manifest was changed",
    "none": "the file carries no Content Credentials",
}


def sniff_mime(data: bytes) -> str:
    """The image type from its magic bytes (PNG, JPEG, WebP, HEIC/AVIF)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypheic", b"ftypmif1", b"ftypheix"):
        return "image/heic"
    if data[4:12] == b"ftypavif":
        return "image/avif"
    return "application/octet-stream"


def _status(item: dict[str, Any], kind: str) -> StatusCode:
    code = str(item.get("code", ""))
    explanation = str(item.get("explanation") or code)
    return StatusCode(kind, code, PLAIN_WORDS.get(code, explanation), str(item.get("url", "")))


def _codes(results: dict[str, Any] | None) -> list[StatusCode]:
    """Status codes of one validation-results block, failures first."""
    return [
        _status(item, kind)
        for kind in ("failure", "informational", "success")
        for item in (results or {}).get(kind) or []
    ]


def _reader_context(anchors_pem: str) -> c2pa.Context:
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "verify_trust": True}}
    if anchors_pem:
        settings["trust"] = {"user_anchors": anchors_pem}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


def _unreadable(exc: Exception) -> VerifyResult:
    code = StatusCode("failure", "manifest.unreadable", f"the manifest cannot be read ({exc})")
    return VerifyResult("Invalid", [code], error=f"the Content Credentials cannot be read: {exc}")


def verify_image(data: bytes, mime_type: str | None, trust_anchors_pem: str) -> VerifyResult:
    """The C2PA validation of ``data`` under ``trust_anchors_pem`` (offline, no remote fetch)."""
    mime = mime_type or sniff_mime(data)
    try:
        reader = c2pa.Reader.try_create(
            mime, io.BytesIO(data), context=_reader_context(trust_anchors_pem)
        )
    except c2pa.C2paError as exc:
        return _unreadable(exc)
    if reader is None:
        return VerifyResult("none")
    try:
        store = json.loads(reader.json())
        state = reader.get_validation_state() or "Invalid"
    except c2pa.C2paError as exc:
        return _unreadable(exc)
    finally:
        reader.close()
    manifests: dict[str, Any] = store.get("manifests") or {}
    active_label = store.get("active_manifest")
    manifest = manifests.get(active_label) or {}
    results = store.get("validation_results") or {}
    codes = _codes(results.get("activeManifest"))
    if not results and store.get("validation_status"):  # c2pa 1.x style report
        codes = [_status(i, "failure") for i in store["validation_status"]]
    delta_failures = _delta_failures(results)
    for found in delta_failures.values():
        codes += [
            StatusCode(c.kind, c.code, f"an ingredient's credentials: {c.plain}", c.url)
            for c in found
        ]
    codes.sort(key=lambda c: c.kind != "failure")
    custody = next(
        (
            a.get("data")
            for a in manifest.get("assertions") or []
            if a.get("label") == ASSERTION_LABEL
        ),
        None,
    )
    thumbnails = []
    if manifest.get("thumbnail"):
        thumbnails.append("a thumbnail of the image itself")
    for ing in manifest.get("ingredients") or []:
        if ing.get("thumbnail"):
            thumbnails.append(f"a thumbnail of ingredient {ing.get('title')!r}")
    chain = _chain(manifests, active_label, delta_failures)
    info = manifest.get("signature_info") or {}
    return VerifyResult(
        state,
        codes,
        custody,
        chain,
        thumbnails,
        info.get("issuer"),
        manifest_label=str(active_label) if active_label else None,
        signer_serial=str(info["cert_serial_number"]) if info.get("cert_serial_number") else None,
        signer_common_name=info.get("common_name"),
        lineage=lineage_chain(store),
    )


def read_manifest_store(
    data: bytes, mime_type: str | None, trust_anchors_pem: str
) -> dict[str, Any] | None:
    """The manifest store of ``data`` as c2pa-rs reports it (JSON), None when there is none or
    it cannot be read: for reading *where* a statement sits (``governance.compliance.record``);
    judge validity with ``verify_image``."""
    try:
        reader = c2pa.Reader.try_create(
            mime_type or sniff_mime(data),
            io.BytesIO(data),
            context=_reader_context(trust_anchors_pem),
        )
    except c2pa.C2paError:
        return None
    if reader is None:
        return None
    try:
        return json.loads(reader.json())  # type: ignore[no-any-return]
    except c2pa.C2paError:
        return None
    finally:
        reader.close()


def _delta_failures(results: dict[str, Any]) -> dict[str, list[StatusCode]]:
    """Failures the reader found in ingredients, keyed by the ingredient assertion's URI."""
    out: dict[str, list[StatusCode]] = {}
    for delta in results.get("ingredientDeltas") or []:
        uri = str(delta.get("ingredientAssertionURI", ""))
        failures = [c for c in _codes(delta.get("validationDeltas")) if c.kind == "failure"]
        if failures:
            out.setdefault(uri, []).extend(failures)
    return out


def _recorded_failures(ing: dict[str, Any]) -> list[StatusCode]:
    """What the ingredient's signer recorded about it (C2PA 2.x results or the 1.x list)."""
    results = ing.get("validation_results") or {}
    found = [c for c in _codes(results.get("activeManifest")) if c.kind == "failure"]
    for delta in results.get("ingredientDeltas") or []:
        for c in _codes(delta.get("validationDeltas")):
            if c.kind == "failure":
                found.append(StatusCode(c.kind, c.code, f"in its own history: {c.plain}", c.url))
    for item in ing.get("validation_status") or []:
        code = str(item.get("code", ""))
        if not code.endswith((".validated", ".match", ".trusted", ".insideValidity")):
            found.append(_status(item, "failure"))
    return found


def _ingredient_depths(manifests: dict[str, Any], label: Any) -> dict[str, int]:
    """The shallowest depth at which each manifest below ``label`` is an ingredient (BFS)."""
    depths: dict[str, int] = {}
    frontier, depth = [label], 1
    while frontier and depth <= _MAX_DEPTH:
        following = []
        for current in frontier:
            for ing in (manifests.get(current) or {}).get("ingredients") or []:
                child = ing.get("active_manifest")
                if child and child not in depths:
                    depths[child] = depth
                    following.append(child)
        frontier, depth = following, depth + 1
    return depths


class _ChainWalk:
    """One walk of a manifest store: each ingredient's state, and each ingredient shown once.

    A chat's turns and an echoed output embed the same earlier manifests many times over; the
    store holds each manifest once (by label), so the chain shows each manifest once, at the
    shallowest depth it occurs, and a credential-less ingredient once per (title, depth, parent).
    Validity is still judged over every occurrence: a duplicate hidden from the listing still
    taints its parent when it is Invalid.
    """

    def __init__(self, manifests: dict[str, Any], deltas: dict[str, list[StatusCode]]) -> None:
        self.manifests = manifests
        self.deltas = deltas
        self.depths: dict[str, int] = {}
        self.shown: set[Any] = set()
        self.invalid_below: dict[str, str | None] = {}

    def links(self, label: Any) -> list[ChainLink]:
        self.depths = _ingredient_depths(self.manifests, label)
        return self._walk(label, 1)

    def _state(self, label: Any, ing: dict[str, Any]) -> tuple[str, list[StatusCode]]:
        child_label = ing.get("active_manifest")
        uri_tail = f"/{label}/c2pa.assertions/{ing.get('label', '')}"
        failures = _recorded_failures(ing) + [
            c for uri, found in self.deltas.items() if uri.endswith(uri_tail) for c in found
        ]
        defects = [c for c in failures if c.code not in _NOT_A_DEFECT]
        if not child_label:
            return "none", defects
        if defects or self._invalid_below(child_label, 1) is not None:
            return "Invalid", defects
        return ("Valid" if failures else "Trusted"), defects

    def _invalid_below(self, label: str, depth: int) -> str | None:
        """The title of the first Invalid ingredient anywhere below ``label``, or None."""
        if label in self.invalid_below:
            return self.invalid_below[label]
        self.invalid_below[label] = None  # a cycle in a hostile store ends here
        found: str | None = None
        if depth <= _MAX_DEPTH:
            for ing in (self.manifests.get(label) or {}).get("ingredients") or []:
                if self._state(label, ing)[0] == "Invalid":
                    found = str(ing.get("title"))
                    break
        self.invalid_below[label] = found
        return found

    def _walk(self, label: Any, depth: int) -> list[ChainLink]:
        manifest = self.manifests.get(label) if label else None
        if not manifest or depth > _MAX_DEPTH:
            return []
        links: list[ChainLink] = []
        for ing in manifest.get("ingredients") or []:
            child_label = ing.get("active_manifest")
            key = child_label or (str(ing.get("title")), depth, label)
            if key in self.shown or (child_label and self.depths.get(child_label, 0) < depth):
                continue  # shown elsewhere in the tree (or about to be, nearer the top)
            self.shown.add(key)
            state, defects = self._state(label, ing)
            reasons = [f"{c.plain} ({c.code})" for c in defects]
            tainted = self._invalid_below(child_label, 1) if child_label else None
            if tainted is not None:
                reasons.append(f"its ingredient {tainted!r} is Invalid")
            child = self.manifests.get(child_label) or {}
            links.append(
                ChainLink(
                    title=str(ing.get("title")),
                    relationship=str(ing.get("relationship")),
                    depth=depth,
                    state=state,
                    reasons=reasons,
                    signer=(child.get("signature_info") or {}).get("issuer"),
                    format=ing.get("format"),
                    manifest=child_label,
                    custody_turn=_custody_turn(child),
                )
            )
            links.extend(self._walk(child_label, depth + 1))
        return links


def _chain(
    manifests: dict[str, Any], label: Any, deltas: dict[str, list[StatusCode]]
) -> list[ChainLink]:
    """Every ingredient below ``label``, depth first, each shown once (see ``_ChainWalk``)."""
    return _ChainWalk(manifests, deltas).links(label)


def _custody_turn(manifest: dict[str, Any]) -> str | None:
    """The turn id in a manifest's ``com.custody.turn`` assertion, if it has one."""
    for a in manifest.get("assertions") or []:
        if a.get("label") == ASSERTION_LABEL and isinstance(a.get("data"), dict):
            turn = a["data"].get("turn_id")
            return str(turn) if turn is not None else None
    return None


@dataclass(frozen=True)
class IndependentResult:
    """encypher-c2pa's verdict: its validation state, integrity, signer trust, failure codes."""

    state: str  # "Trusted" | "Valid" | "Invalid" | "none"
    integrity: str
    trust: str
    failures: list[str]
    verifier: str = "encypher-c2pa"

    @property
    def ok(self) -> bool:
        """Trusted: intact and signed under one of the supplied anchors."""
        return self.state == "Trusted"


def verify_independently(
    data: bytes, mime_type: str | None, trust_anchors_pem: str
) -> IndependentResult:
    """The verdict of encypher-c2pa (its own C2PA core), trusting only ``trust_anchors_pem``."""
    import encypher_c2pa  # imported late: a second native core, only loaded when asked

    report = encypher_c2pa.verify(
        data,
        mime_type or sniff_mime(data),
        trust_pem=trust_anchors_pem or None,
        no_default_trust=True,
        online=False,
    )
    if not report.get("present", True):
        return IndependentResult("none", "absent", "not_evaluated", [])
    failures = [
        str(f.get("code")) for f in (report.get("validation_results") or {}).get("failure") or []
    ]
    return IndependentResult(
        state=str(report.get("validation_state")),
        integrity=str(report.get("integrity")),
        trust=str((report.get("trust") or {}).get("status")),
        failures=failures,
    )
