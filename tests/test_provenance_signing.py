"""The signer, its development PKI and the manifests it writes, with real c2pa-python."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import c2pa
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from governance.provenance.pki import C2PA_CLAIM_SIGNING, DOCUMENT_SIGNING, ensure_dev_pki
from governance.provenance.signer import (
    CallbackBackend,
    FileKeyBackend,
    InputImage,
    OutputSigner,
    ProvenanceContext,
    es256_callback_for_key,
)
from governance.provenance.verify import verify_image, verify_independently


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def signer(pki) -> OutputSigner:
    backend = FileKeyBackend(pki.signer_chain.read_bytes(), pki.signer_key.read_bytes())
    return OutputSigner(backend, pki.root_cert.read_text(), development=True)


def _ctx(inputs: list[InputImage], **kw: object) -> ProvenanceContext:
    base: dict[str, object] = {
        "turn_id": "t1",
        "tenant": "acme",
        "actor": "editor@acme",
        "model": "gemini-2.5-flash-image",
        "model_version": "gemini-2.5-flash-image-001",
        "is_emulator": False,
        "inputs": inputs,
        "prompt_commitment": "salted-sha256:abc",
        "prompt_text": None,
        "mask_commitments": [],
        "policy": {"bundle_revision": "r1", "outcome": "allow", "reasons": []},
        "approvals": [],
        "ledger_ref": {"log_origin": "custody.local/ledger", "turn_id": "t1", "leaf_index": 0},
        "gateway_version": "test",
    }
    base.update(kw)
    return ProvenanceContext(**base)  # type: ignore[arg-type]


def _photo(shared_dir: Path, name: str) -> bytes:
    return (shared_dir / "fixtures" / "photos" / name).read_bytes()


def _manifest(data: bytes, anchors: str) -> dict:
    ctx = c2pa.Context(
        c2pa.Settings.from_dict(
            {"verify": {"remote_manifest_fetch": False}, "trust": {"user_anchors": anchors}}
        )
    )
    reader = c2pa.Reader("image/png", io.BytesIO(data), context=ctx)
    store = json.loads(reader.json())
    reader.close()
    return store["manifests"][store["active_manifest"]]


def test_development_pki_has_the_chain_and_usages_verifiers_require(pki) -> None:
    certs = x509.load_pem_x509_certificates(pki.signer_chain.read_bytes())
    signer_cert, intermediate = certs
    root = x509.load_pem_x509_certificate(pki.root_cert.read_bytes())
    assert signer_cert.issuer == intermediate.subject and intermediate.issuer == root.subject
    assert signer_cert.issuer != signer_cert.subject, "never self-signed"
    eku = signer_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.EMAIL_PROTECTION, C2PA_CLAIM_SIGNING, DOCUMENT_SIGNING} <= set(eku)
    assert signer_cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not signer_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert in (signer_cert, intermediate):
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert "DEVELOPMENT" in signer_cert.subject.rfc4514_string()
    for key in pki.folder.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_an_edit_is_trusted_by_both_implementations_and_says_what_happened(
    signer, shared_dir
) -> None:
    data = _photo(shared_dir, "sample1.png")
    out = signer.sign_output(
        data, "image/png", _ctx([InputImage(data, "image/png", "0" * 64, "parent", "in")])
    )
    anchors = signer.trust_anchors_pem()
    assert verify_image(out.data, "image/png", anchors).state == "Trusted"
    assert verify_independently(out.data, "image/png", anchors).ok
    manifest = _manifest(out.data, anchors)
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
    kinds = [a["action"] for a in actions["data"]["actions"]]
    assert kinds == ["c2pa.opened", "c2pa.edited"]
    edited = actions["data"]["actions"][1]
    assert edited["digitalSourceType"].endswith("compositeWithTrainedAlgorithmicMedia")
    assert edited["softwareAgent"]["name"] == "gemini-2.5-flash-image"
    custody = next(a for a in manifest["assertions"] if a["label"] == "com.custody.turn")
    assert custody["data"]["synthid"]["verified"] is False
    assert "not independently verified" in custody["data"]["synthid"]["note"]
    mining = next(a for a in manifest["assertions"] if a["label"] == "cawg.training-mining")
    assert mining["data"]["entries"]["cawg.ai_training"]["use"] == "notAllowed"
    assert manifest["ingredients"][0]["relationship"] == "parentOf"
    assert "thumbnail" not in manifest


def test_text_only_generation_is_created_by_trained_algorithmic_media(signer, shared_dir):
    out = signer.sign_output(_photo(shared_dir, "sample1.png"), "image/png", _ctx([]))
    manifest = _manifest(out.data, signer.trust_anchors_pem())
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
    (created,) = actions["data"]["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"].endswith("/trainedAlgorithmicMedia")


def test_prompt_is_only_in_the_file_when_policy_disclosed_it(signer, shared_dir) -> None:
    data = _photo(shared_dir, "sample1.png")
    hidden = signer.sign_output(data, "image/png", _ctx([], prompt_text=None))
    shown = signer.sign_output(data, "image/png", _ctx([], prompt_text="make it teal 4711"))
    assert b"make it teal 4711" not in hidden.data
    assert b"make it teal 4711" in shown.data


def test_thumbnails_only_when_an_obligation_asks(signer, shared_dir) -> None:
    data = _photo(shared_dir, "sample1.png")
    with_thumbs = signer.sign_output(data, "image/png", _ctx([], thumbnails=True))
    assert verify_image(with_thumbs.data, "image/png", signer.trust_anchors_pem()).thumbnails


def test_upstream_output_with_credentials_becomes_the_parent_ingredient(signer, shared_dir):
    """Google's own manifest on an output is kept: the exact output is the parentOf ingredient."""
    photo = _photo(shared_dir, "sample1.png")
    upstream = signer.sign_output(photo, "image/png", _ctx([])).data  # stands in for Google's
    edited_input = InputImage(photo, "image/png", "0" * 64, "parent", "in")
    out = signer.sign_output(upstream, "image/png", _ctx([edited_input]))
    assert out.upstream_had_credentials
    result = verify_image(out.data, "image/png", signer.trust_anchors_pem())
    assert result.state == "Trusted"
    parents = [i for i in result.ingredients if i["relationship"] == "parentOf"]
    assert len(parents) == 1 and parents[0]["has_manifest"] and parents[0]["valid"]
    assert "model output" in parents[0]["title"]
    assert [i["relationship"] for i in result.ingredients].count("inputTo") == 1


def test_a_signing_callback_stands_in_for_a_kms(pki, shared_dir) -> None:
    backend = CallbackBackend(
        pki.signer_chain.read_bytes(), es256_callback_for_key(pki.signer_key.read_bytes())
    )
    kms_signer = OutputSigner(backend, pki.root_cert.read_text(), development=True)
    out = kms_signer.sign_output(_photo(shared_dir, "sample1.png"), "image/png", _ctx([]))
    assert verify_image(out.data, "image/png", pki.root_cert.read_text()).state == "Trusted"
    assert verify_independently(out.data, "image/png", pki.root_cert.read_text()).ok


def test_an_image_without_credentials_is_reported_as_such(signer, shared_dir) -> None:
    assert verify_image(_photo(shared_dir, "sample1.png"), None, "").state == "none"
