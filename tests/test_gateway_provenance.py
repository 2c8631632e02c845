"""Every image the gateway releases carries Content Credentials that verify as Trusted (issue 4).

Checked through the real route with the real SDK, under c2pa-python (c2pa-rs) and under an
independent C2PA implementation (encypher-c2pa), with the development root as trust anchor.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import httpx
import pytest
from google.genai import types
from PIL import Image

from governance.provenance.verify import verify_image, verify_independently

MODEL = "gemini-2.5-flash-image"


def _edit(custody, data: bytes, mime: str, prompt: str) -> tuple[bytes, str]:
    response = custody.client().models.generate_content(
        model=MODEL, contents=[types.Part.from_bytes(data=data, mime_type=mime), prompt]
    )
    parts = response.candidates[0].content.parts
    images = [p.inline_data for p in parts if p.inline_data and p.inline_data.data]
    assert len(images) == 1
    headers = response.sdk_http_response.headers or {}
    return images[0].data, headers["x-custody-turn"]


def _anchors(custody) -> str:
    return custody.services.signer.trust_anchors_pem()


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("sample1.png", "image/png"),
        ("earth_apollo17.jpg", "image/jpeg"),
        ("mars.webp", "image/webp"),
    ],
)
def test_released_image_is_trusted_under_two_c2pa_implementations(
    custody, photo_bytes, name, mime
) -> None:
    signed, turn = _edit(custody, photo_bytes[name], mime, "make it teal")
    result = verify_image(signed, None, _anchors(custody))
    assert result.state == "Trusted", result
    assert result.custody is not None and result.custody["turn_id"] == turn
    independent = verify_independently(signed, None, _anchors(custody))
    assert independent.ok, independent


def test_published_file_holds_no_prompt_no_original_and_no_thumbnail(custody, photo_bytes):
    prompt = "make it teal with a secret-codeword-7781"
    original = photo_bytes["earth_apollo17.jpg"]
    signed, _ = _edit(custody, original, "image/jpeg", prompt)
    assert b"secret-codeword-7781" not in signed
    # No run of the original's bytes (say 4 KiB from its middle) appears in the output.
    middle = len(original) // 2
    assert original[middle : middle + 4096] not in signed
    result = verify_image(signed, None, _anchors(custody))
    assert not result.thumbnails, "no thumbnail of the output or of any ingredient by default"


def test_an_edit_of_a_credentialed_image_keeps_its_manifest_as_a_valid_ingredient(
    custody, fixtures_dir
) -> None:
    ca = (fixtures_dir / "credentialed" / "CA.jpg").read_bytes()
    signed, _ = _edit(custody, ca, "image/jpeg", "brighten it")
    result = verify_image(signed, None, _anchors(custody))
    assert result.state == "Trusted"
    parent = [i for i in result.ingredients if i["relationship"] == "parentOf"]
    assert parent and parent[0]["has_manifest"] and parent[0]["valid"], result.ingredients


def test_an_edit_of_an_invalid_credentialed_image_records_the_invalid_ingredient(
    custody, fixtures_dir
) -> None:
    bad = (fixtures_dir / "credentialed" / "CIE-sig-CA.jpg").read_bytes()
    signed, _ = _edit(custody, bad, "image/jpeg", "brighten it")
    result = verify_image(signed, None, _anchors(custody))
    parent = [i for i in result.ingredients if i["relationship"] == "parentOf"]
    assert parent and parent[0]["has_manifest"] and not parent[0]["valid"], result.ingredients


def _change_one_pixel(png: bytes) -> bytes:
    """Change one pixel of a PNG and keep every other chunk (its Content Credentials too)."""
    pos, chunks = 8, []
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        chunks.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    img = Image.open(io.BytesIO(png))
    assert img.mode in ("RGB", "RGBA"), img.mode
    pixels = bytearray(img.tobytes())
    pixels[0] ^= 0x01  # the first channel of the first pixel
    stride = len(pixels) // img.height
    # Re-emit the scanlines unfiltered (filter type 0) so exactly one pixel changes.
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(img.height))
    out, idat_done = [png[:8]], False
    for ctype, data in chunks:
        if ctype == b"IDAT":
            if idat_done:
                continue
            ctype, data, idat_done = b"IDAT", zlib.compress(bytes(raw)), True
        crc = zlib.crc32(ctype + data) & 0xFFFFFFFF
        out.append(struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc))
    return b"".join(out)


def test_a_changed_pixel_makes_custody_verify_say_invalid(custody, photo_bytes, tmp_path):
    signed, _ = _edit(custody, photo_bytes["sample1.png"], "image/png", "make it teal")
    assert signed.startswith(b"\x89PNG")
    tampered = _change_one_pixel(signed)
    before = Image.open(io.BytesIO(signed)).convert("RGB")
    after = Image.open(io.BytesIO(tampered)).convert("RGB")
    assert before.getpixel((0, 0)) != after.getpixel((0, 0))
    assert before.getpixel((1, 0)) == after.getpixel((1, 0))
    path = tmp_path / "tampered.png"
    path.write_bytes(tampered)
    env_dir = custody.services.settings.data_dir
    out = subprocess.run(
        [sys.executable, "-m", "governance.cli", "verify", str(path)],
        capture_output=True,
        text=True,
        env={"CUSTODY_DATA_DIR": str(env_dir), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Invalid" in out.stdout
    assert "hash" in out.stdout.lower() or "changed" in out.stdout.lower()


def test_verify_route_returns_the_turns_record_with_a_checked_proof(custody, photo_bytes):
    signed, turn = _edit(custody, photo_bytes["sample1.png"], "image/png", "grayscale")
    custody.services.ledger.issue_checkpoint()
    resp = httpx.post(
        custody.base_url + "/api/v1/verify",
        content=signed,
        headers={"x-goog-api-key": custody.keys["auditor"], "content-type": "image/png"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["c2pa"]["state"] == "Trusted"
    record = body["ledger"]
    assert record["turn_id"] == turn
    assert record["proofs_verified"] is True
    assert any(e["type"] == "turn.released" for e in record["events"])
    denied = httpx.post(
        custody.base_url + "/api/v1/verify",
        content=signed,
        headers={"x-goog-api-key": custody.keys["editor"], "content-type": "image/png"},
        timeout=60,
    )
    assert denied.status_code == 403


def _strip_png_manifest(png: bytes) -> bytes:
    """Remove the C2PA chunk (caBX) from a PNG, as a metadata-stripping tool would."""
    pos, out = 8, [png[:8]]
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        chunk = png[pos : pos + 12 + length]
        if chunk[4:8] != b"caBX":
            out.append(chunk)
        pos += 12 + length
    return b"".join(out)


def test_an_image_whose_metadata_was_stripped_is_found_by_its_hash(custody, photo_bytes):
    signed, turn = _edit(custody, photo_bytes["sample1.png"], "image/png", "grayscale")
    stripped = _strip_png_manifest(signed)
    assert b"caBX" not in stripped and len(stripped) < len(signed)
    custody.services.ledger.issue_checkpoint()  # an auditor's read never signs one
    resp = httpx.post(
        custody.base_url + "/api/v1/verify",
        content=stripped,
        headers={"x-goog-api-key": custody.keys["auditor"], "content-type": "image/png"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["c2pa"]["state"] == "none"
    assert body["found_by"] == "hash"
    assert body["ledger"]["turn_id"] == turn and body["ledger"]["proofs_verified"] is True


def test_verify_route_refuses_bad_input_with_a_json_error(custody) -> None:
    headers = {"x-goog-api-key": custody.keys["auditor"], "content-type": "application/json"}
    resp = httpx.post(
        custody.base_url + "/api/v1/verify", content=b'{"data": "%%%"}', headers=headers, timeout=30
    )
    assert resp.status_code == 400 and "error" in resp.json()
    assert httpx.post(custody.base_url + "/api/v1/verify", content=b"x").status_code == 401


def test_a_masked_edit_names_the_mask_only_by_its_commitment(custody, photo_bytes) -> None:
    photo = photo_bytes["sample1.png"]
    mask_img = Image.new("L", Image.open(io.BytesIO(photo)).size, 0)
    mask_img.paste(255, (10, 10, 60, 60))
    buf = io.BytesIO()
    mask_img.save(buf, "PNG")
    mask = buf.getvalue()
    response = custody.client().models.generate_content(
        model=MODEL,
        contents=[
            types.Part.from_bytes(data=photo, mime_type="image/png"),
            "mask:",
            types.Part.from_bytes(data=mask, mime_type="image/png"),
            "make the masked area teal",
        ],
    )
    parts = response.candidates[0].content.parts
    signed = next(p.inline_data.data for p in parts if p.inline_data and p.inline_data.data)
    turn = response.sdk_http_response.headers["x-custody-turn"]
    received = custody.ledger_events(turn)[0]["body"]
    masks = [i["commitment"] for i in received["images"] if i["role"] == "mask"]
    assert len(masks) == 1
    result = verify_image(signed, None, _anchors(custody))
    assert result.state == "Trusted"
    assert result.custody["masks"] == masks
    assert mask not in signed
