"""Signing with real c2pa-python: every format verifies as Trusted under c2pa-rs and encypher-c2pa,
and the manifest says what happened (actions, agent, Custody assertion, training-mining)."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import c2pa
import pytest

from governance.provenance.pki import DevPki, ensure_dev_pki
from governance.provenance.signer import (
    CallbackBackend,
    FileKeyBackend,
    OutputSigner,
    es256_callback_for_key,
)
from governance.provenance.types import Approval, InputImage, ProvenanceContext
from governance.provenance.verify import verify_image, verify_independently
from governance.settings import GOOGLE_GEMINI_URL, Settings
from governance.upstream.identity import identify_upstream

PHOTOS = {
    "sample1.png": "image/png",
    "IMG_0003.jpg": "image/jpeg",
    "mars.webp": "image/webp",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


def make_signer(pki: DevPki) -> OutputSigner:
    """An OutputSigner over the development PKI's key file."""
    backend = FileKeyBackend(pki.signer_chain.read_bytes(), pki.signer_key.read_bytes())
    return OutputSigner(backend, pki.root_cert.read_text(), development=True)


@pytest.fixture(scope="module")
def signer(pki: DevPki) -> OutputSigner:
    return make_signer(pki)


def make_ctx(inputs: list[InputImage], **kw: Any) -> ProvenanceContext:
    base: dict[str, Any] = {
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
    if "upstream" not in base:  # Google's endpoint, unless the test says the emulator answered
        base["upstream"] = identify_upstream(
            GOOGLE_GEMINI_URL, is_emulator=base["is_emulator"], model_version=base["model_version"]
        )
    return ProvenanceContext(**base)


def active_manifest(data: bytes, mime: str, anchors: str) -> dict[str, Any]:
    settings = {"verify": {"remote_manifest_fetch": False}, "trust": {"user_anchors": anchors}}
    reader = c2pa.Reader(
        mime, io.BytesIO(data), context=c2pa.Context(c2pa.Settings.from_dict(settings))
    )
    try:
        store = json.loads(reader.json())
    finally:
        reader.close()
    return store["manifests"][store["active_manifest"]]


def assertion(manifest: dict[str, Any], label: str) -> dict[str, Any]:
    return next(a["data"] for a in manifest["assertions"] if a["label"] == label)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_each_format_is_trusted_by_c2pa_rs_and_by_encypher(
    signer: OutputSigner, fixtures_dir: Path, name: str
) -> None:
    mime = PHOTOS[name]
    data = (fixtures_dir / "photos" / name).read_bytes()
    parent = InputImage(data, mime, "0" * 64, "parent", "input 1")
    out = signer.sign_output(data, mime, make_ctx([parent]))
    anchors = signer.trust_anchors_pem()
    ours = verify_image(out.data, mime, anchors)
    assert ours.state == "Trusted", ours.reasons
    independent = verify_independently(out.data, mime, anchors)
    assert independent.ok, independent
    # The file we return is exactly the file we hashed, and the manifest is the one embedded.
    import hashlib

    assert out.sha256 == hashlib.sha256(out.data).hexdigest()
    assert out.manifest and out.manifest_sha256 == hashlib.sha256(out.manifest).hexdigest()


def test_an_edit_says_opened_then_edited_by_the_model(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    approval = Approval(
        reviewer="rev@acme",
        identity="name",
        group="reviewers",
        decision_id="d1",
        time_ms=1_700_000_000_000,
        task="task1",
        stage="request",
        turn="t1",
        shown={"request": "0" * 64, "prompt": None, "inputs": [], "masks": [], "outputs": []},
        shown_digest="1" * 64,
        ledger_index=3,
    )
    out = signer.sign_output(
        data,
        "image/png",
        make_ctx([InputImage(data, "image/png", "0" * 64, "parent", "in")], approvals=[approval]),
    )
    manifest = active_manifest(out.data, "image/png", signer.trust_anchors_pem())
    actions = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
    assert actions[1]["digitalSourceType"] == (
        "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
    )
    assert actions[1]["softwareAgent"] == {
        "name": "gemini-2.5-flash-image",
        "version": "gemini-2.5-flash-image-001",
    }
    custody = assertion(manifest, "com.custody.turn")
    assert custody["turn_id"] == "t1" and custody["tenant"] == "acme"
    assert custody["actor"] == "editor@acme" and custody["emulator"] is False
    assert custody["prompt"] == {"commitment": "salted-sha256:abc"}
    assert custody["approvals"][0]["reviewer"] == "rev@acme"
    assert custody["approvals"][0]["task"] == "task1"
    assert custody["policy"]["outcome"] == "allow"
    assert custody["ledger"]["log_origin"] == "custody.local/ledger"
    assert "not independently verified" in custody["synthid"]["statement"]
    mining = assertion(manifest, "cawg.training-mining")["entries"]
    assert {v["use"] for v in mining.values()} == {"notAllowed"}
    assert [i["relationship"] for i in manifest["ingredients"]] == ["parentOf"]


def test_text_only_generation_is_created_by_trained_algorithmic_media(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    out = signer.sign_output(data, "image/png", make_ctx([], training_mining="allowed"))
    manifest = active_manifest(out.data, "image/png", signer.trust_anchors_pem())
    (created,) = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    mining = assertion(manifest, "cawg.training-mining")["entries"]
    assert mining["cawg.ai_training"]["use"] == "allowed"
    assert "ingredients" not in manifest or not manifest["ingredients"]


def test_emulator_output_says_so_and_claims_no_synthid(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    out = signer.sign_output(data, "image/png", make_ctx([], is_emulator=True))
    custody = verify_image(out.data, "image/png", signer.trust_anchors_pem()).custody
    assert custody is not None
    assert custody["emulator"] is True and "emulator" in custody["generator"]
    assert "Custody emulator" in custody["synthid"]["statement"]
    assert "no SynthID" in custody["synthid"]["statement"]


def test_references_and_masks_are_input_to_ingredients(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    photos = fixtures_dir / "photos"
    png = (photos / "sample1.png").read_bytes()
    jpg = (photos / "IMG_0003.jpg").read_bytes()
    inputs = [
        InputImage(png, "image/png", "0" * 64, "parent", "photo"),
        InputImage(jpg, "image/jpeg", "1" * 64, "reference", "style"),
        InputImage(png, "image/png", "2" * 64, "mask", "mask"),
    ]
    out = signer.sign_output(png, "image/png", make_ctx(inputs, mask_commitments=["salted:m"]))
    chain = verify_image(out.data, "image/png", signer.trust_anchors_pem()).ingredients
    relationships = {link.title: link.relationship for link in chain}
    assert relationships == {
        "parent: photo": "parentOf",
        "reference: style": "inputTo",
        "mask: mask": "inputTo",
    }
    assert [s.state for s in out.ingredient_states] == ["none", "none", "none"]


def test_a_signing_callback_stands_in_for_a_kms(pki: DevPki, fixtures_dir: Path) -> None:
    backend = CallbackBackend(
        pki.signer_chain.read_bytes(), es256_callback_for_key(pki.signer_key.read_bytes())
    )
    kms_signer = OutputSigner(backend, pki.root_cert.read_text(), development=False)
    data = (fixtures_dir / "photos" / "IMG_0003.jpg").read_bytes()
    out = kms_signer.sign_output(data, "image/jpeg", make_ctx([]))
    assert verify_image(out.data, "image/jpeg", pki.root_cert.read_text()).state == "Trusted"
    assert verify_independently(out.data, "image/jpeg", pki.root_cert.read_text()).ok


def test_settings_name_a_callback_module_and_function(
    tmp_path: Path, pki: DevPki, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production: a PEM chain plus ``CUSTODY_SIGNING_CALLBACK=module:function``, no key file."""
    calls: list[int] = []
    sign = es256_callback_for_key(pki.signer_key.read_bytes())

    def kms_sign(data: bytes) -> bytes:
        calls.append(len(data))
        return sign(data)

    module = types.ModuleType("fake_kms")
    module.kms_sign = kms_sign  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_kms", module)
    settings = Settings(
        data_dir=tmp_path,
        signing_cert_file=pki.signer_chain,
        signing_callback="fake_kms:kms_sign",
        trust_anchors_file=pki.root_cert,
    )
    prod = OutputSigner.from_settings(settings)
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    out = prod.sign_output(data, "image/png", make_ctx([]))
    assert calls, "the callback signed"
    assert verify_image(out.data, "image/png", prod.trust_anchors_pem()).state == "Trusted"
    assert not (tmp_path / "pki").exists(), "no development PKI in production"


def test_signing_from_many_threads_at_once(signer: OutputSigner, fixtures_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = (fixtures_dir / "photos" / "IMG_0003.jpg").read_bytes()
    with ThreadPoolExecutor(4) as pool:
        outs = list(
            pool.map(lambda _: signer.sign_output(data, "image/jpeg", make_ctx([])), range(8))
        )
    anchors = signer.trust_anchors_pem()
    assert all(verify_image(o.data, "image/jpeg", anchors).state == "Trusted" for o in outs)
