"""Changing a released image is caught and explained; files without credentials say so."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from governance.provenance.pki import ensure_dev_pki
from governance.provenance.signer import OutputSigner
from governance.provenance.verify import verify_image, verify_independently
from tests.test_provenance_signing import make_ctx, make_signer


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> OutputSigner:
    return make_signer(ensure_dev_pki(tmp_path_factory.mktemp("pki")))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append((data[pos + 4 : pos + 8], data[pos : pos + 12 + length]))
        pos += 12 + length
    return chunks


def change_one_pixel(png: bytes) -> bytes:
    """The same PNG, manifest chunk untouched, with pixel (10, 10) one step brighter."""
    img = Image.open(io.BytesIO(png))
    img.load()
    pixel = img.getpixel((10, 10))
    assert isinstance(pixel, tuple)
    img.putpixel((10, 10), tuple((v + 1) % 256 for v in pixel))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    new_idat = b"".join(c for t, c in _png_chunks(buf.getvalue()) if t == b"IDAT")
    out, replaced = bytearray(png[:8]), False
    for ctype, chunk in _png_chunks(png):
        if ctype != b"IDAT":
            out += chunk
        elif not replaced:
            out += new_idat
            replaced = True
    return bytes(out)


def test_one_changed_pixel_makes_the_file_invalid_and_says_why(
    signer: OutputSigner, fixtures_dir: Path
) -> None:
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    signed = signer.sign_output(data, "image/png", make_ctx([])).data
    tampered = change_one_pixel(signed)
    assert Image.open(io.BytesIO(tampered)).getpixel((10, 10)) != Image.open(
        io.BytesIO(signed)
    ).getpixel((10, 10))
    anchors = signer.trust_anchors_pem()
    result = verify_image(tampered, "image/png", anchors)
    assert result.state == "Invalid"
    assert any("bytes were changed after it was signed" in r for r in result.reasons)
    assert not verify_independently(tampered, "image/png", anchors).ok


def test_a_flipped_bit_in_a_jpeg_is_caught(signer: OutputSigner, fixtures_dir: Path) -> None:
    data = (fixtures_dir / "photos" / "IMG_0003.jpg").read_bytes()
    signed = bytearray(signer.sign_output(data, "image/jpeg", make_ctx([])).data)
    signed[-100] ^= 0x01  # inside the entropy-coded scan
    result = verify_image(bytes(signed), "image/jpeg", signer.trust_anchors_pem())
    assert result.state == "Invalid" and result.reasons


def test_a_signature_under_another_root_is_valid_not_trusted(
    signer: OutputSigner, fixtures_dir: Path, tmp_path: Path
) -> None:
    from governance.provenance.pki import ensure_dev_pki

    other_root = ensure_dev_pki(tmp_path).root_cert.read_text()
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    signed = signer.sign_output(data, "image/png", make_ctx([])).data
    result = verify_image(signed, "image/png", other_root)
    assert result.state == "Valid"
    assert any("trusted anchor" in r for r in result.reasons)


def test_an_image_without_credentials_is_reported_as_such(fixtures_dir: Path) -> None:
    data = (fixtures_dir / "photos" / "sample1.png").read_bytes()
    assert verify_image(data, None, "").state == "none"
    assert verify_independently(data, None, "").state == "none"
