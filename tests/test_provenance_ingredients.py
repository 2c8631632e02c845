"""Inputs that already carry Content Credentials keep them; the provider's own credentials on an
output are kept as the parentOf ingredient."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance.provenance.pki import ensure_dev_pki
from governance.provenance.signer import OutputSigner
from governance.provenance.types import InputImage
from governance.provenance.verify import verify_image, verify_independently
from tests.test_provenance_signing import make_ctx, make_signer


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> OutputSigner:
    return make_signer(ensure_dev_pki(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> OutputSigner:
    """Stands in for the provider's signer (Google's): another PKI, not under our anchors.

    Not our own signer: an image signed by Custody itself is an earlier Custody output, never
    the provider's credentials (see tests/test_provenance_identity.py).
    """
    return make_signer(ensure_dev_pki(tmp_path_factory.mktemp("provider-pki")))


def _edit_of(signer: OutputSigner, fixtures_dir: Path, name: str) -> tuple[bytes, object]:
    source = (fixtures_dir / "credentialed" / name).read_bytes()
    output = (fixtures_dir / "photos" / "IMG_0003.jpg").read_bytes()
    parent = InputImage(source, "image/jpeg", "0" * 64, "parent", name)
    out = signer.sign_output(output, "image/jpeg", make_ctx([parent]))
    return out.data, out


def test_a_valid_credentialed_input_is_kept_as_a_validated_ingredient(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    data, out = _edit_of(signer, fixtures_dir, "CA.jpg")
    anchors = signer.trust_anchors_pem()
    result = verify_image(data, "image/jpeg", anchors)
    assert result.state == "Trusted", result.reasons
    assert verify_independently(data, "image/jpeg", anchors).ok
    parent = next(link for link in result.ingredients if link.depth == 1)
    assert parent.relationship == "parentOf" and parent.title == "parent: CA.jpg"
    # Intact, signed by the C2PA project's test signer, which is not under our anchors.
    assert parent.state == "Valid" and parent.reasons == []
    assert parent.signer == "C2PA Test Signing Cert"
    assert any(link.depth == 2 and link.title == "A.jpg" for link in result.ingredients)
    (state,) = out.ingredient_states  # type: ignore[attr-defined]
    assert state.state == "Valid"


def test_an_input_with_a_broken_signature_is_recorded_as_invalid(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    data, out = _edit_of(signer, fixtures_dir, "CIE-sig-CA.jpg")
    result = verify_image(data, "image/jpeg", signer.trust_anchors_pem())
    assert result.state == "Trusted", "our own signature is sound; the ingredient is not"
    parent = next(link for link in result.ingredients if link.depth == 1)
    assert parent.state == "Invalid"
    assert any("claimSignature.mismatch" in r for r in parent.reasons), parent.reasons
    (state,) = out.ingredient_states  # type: ignore[attr-defined]
    assert state.state == "Invalid"
    assert any("claimSignature.mismatch" in r for r in state.reasons), state.reasons


def test_upstream_output_with_credentials_becomes_the_parent_ingredient(
    signer: OutputSigner, provider: OutputSigner, fixtures_dir: Path
) -> None:
    """Google's own manifest on an output is kept: the exact output is the parentOf ingredient."""
    photo = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    upstream = provider.sign_output(photo, "image/png", make_ctx([])).data  # stands in for Google's
    edited_input = InputImage(photo, "image/png", "0" * 64, "parent", "in")
    out = signer.sign_output(upstream, "image/png", make_ctx([edited_input]))
    assert out.upstream_had_credentials
    result = verify_image(out.data, "image/png", signer.trust_anchors_pem())
    assert result.state == "Trusted"
    direct = [link for link in result.ingredients if link.depth == 1]
    parents = [link for link in direct if link.relationship == "parentOf"]
    # Intact; the provider's signer is not under our anchors.
    assert len(parents) == 1 and parents[0].state == "Valid"
    assert "model output" in parents[0].title and "provider" in parents[0].title
    assert [link.relationship for link in direct].count("inputTo") == 1
    assert result.custody is not None and result.custody["upstream_credentials"] is True
    # Never re-encoded: every byte of the upstream file's image data is still there.
    idat = upstream[upstream.index(b"IDAT") - 4 :]
    assert idat in out.data


def test_credentials_on_an_upstream_generation_from_text_are_kept_too(
    signer: OutputSigner, provider: OutputSigner, fixtures_dir: Path
) -> None:
    photo = (fixtures_dir / "photos" / "IMG_0003.jpg").read_bytes()
    upstream = provider.sign_output(photo, "image/jpeg", make_ctx([])).data
    out = signer.sign_output(upstream, "image/jpeg", make_ctx([]))
    result = verify_image(out.data, "image/jpeg", signer.trust_anchors_pem())
    assert result.state == "Trusted"
    first = result.ingredients[0]
    assert (first.relationship, first.depth) == ("parentOf", 1)
