"""Nothing private reaches the published file unless policy disclosed it (searched in the bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance.provenance.pki import ensure_dev_pki
from governance.provenance.signer import OutputSigner
from governance.provenance.types import InputImage
from governance.provenance.verify import verify_image
from tests.test_provenance_signing import make_ctx, make_signer

PROMPT = "make the sofa teal, secret codename 4711"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> OutputSigner:
    return make_signer(ensure_dev_pki(tmp_path_factory.mktemp("pki")))


def _slices(data: bytes, n: int = 16, width: int = 48) -> list[bytes]:
    """Slices spread over a file's body: any one of them found means its bytes leaked."""
    step = max(1, (len(data) - 1024) // n)
    return [data[512 + i * step : 512 + i * step + width] for i in range(n)]


def test_prompt_input_and_mask_are_not_in_the_published_file(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    photos = fixtures_dir / "photos"
    output = (photos / "sample1.png").read_bytes()
    original = (photos / "P1000827.jpg").read_bytes()
    mask = (photos / "mars.webp").read_bytes()
    inputs = [
        InputImage(original, "image/jpeg", "0" * 64, "parent", "input 1 (image/jpeg)"),
        InputImage(mask, "image/webp", "1" * 64, "mask", "input 2 (image/webp)"),
    ]
    out = signer.sign_output(
        output, "image/png", make_ctx(inputs, mask_commitments=["salted-sha256:mask"])
    )
    published = out.data
    assert PROMPT.encode() not in published
    for secret in (original, mask):
        # Only bytes the upstream output did not already contain count as a leak.
        fresh = [s for s in _slices(secret) if s not in output]
        assert len(fresh) >= 12 and not any(s in published for s in fresh)
    for name in ("input 1", "input 2"):
        assert name.encode() in published  # titles are there: the search would find leaks
    assert verify_image(published, "image/png", signer.trust_anchors_pem()).thumbnails == []
    assert b"c2pa.thumbnail" not in published


def test_prompt_is_in_the_file_only_when_policy_disclosed_it(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    hidden = signer.sign_output(data, "image/png", make_ctx([], prompt_text=None))
    shown = signer.sign_output(data, "image/png", make_ctx([], prompt_text=PROMPT))
    assert PROMPT.encode() not in hidden.data
    assert PROMPT.encode() in shown.data


def test_thumbnails_only_when_an_obligation_asks(signer: OutputSigner, fixtures_dir: Path) -> None:
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    with_thumbs = signer.sign_output(data, "image/png", make_ctx([], thumbnails=True))
    assert verify_image(with_thumbs.data, "image/png", signer.trust_anchors_pem()).thumbnails
    assert b"c2pa.thumbnail" in with_thumbs.data
