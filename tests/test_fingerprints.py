"""Fingerprints (PDQ, ISCC Image-Code), the ``c2pa.soft-binding`` assertion, and the lookup of
stripped and re-encoded copies (issue 18, item 2).

Through the real route with the real google-genai SDK, c2pa-python (c2pa-rs) and encypher-c2pa as
verifiers, the real ``custody verify`` CLI, and the fingerprint index on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import json
from typing import Any

import c2pa
import pytest
from google.genai import types
from PIL import Image
from sqlalchemy import select

from governance.provenance.fingerprint import ISCC_ALG, fingerprint, iscc_distance
from governance.provenance.verify import verify_image, verify_independently
from storage.schema.fingerprints import IMAGE_FINGERPRINTS

MODEL = "gemini-2.5-flash-image"


def edit(
    custody: Any, data: bytes, mime: str, prompt: str, role: str = "editor"
) -> tuple[bytes, str]:
    response = custody.client(role).models.generate_content(
        model=MODEL, contents=[types.Part.from_bytes(data=data, mime_type=mime), prompt]
    )
    parts = response.candidates[0].content.parts
    images = [p.inline_data for p in parts if p.inline_data and p.inline_data.data]
    assert len(images) == 1
    headers = response.sdk_http_response.headers or {}
    return images[0].data, headers["x-custody-turn"]


def manifest_assertions(data: bytes, anchors: str) -> dict[str, Any]:
    settings = {"verify": {"remote_manifest_fetch": False}, "trust": {"user_anchors": anchors}}
    mime = Image.open(io.BytesIO(data)).get_format_mimetype()
    reader = c2pa.Reader(
        mime, io.BytesIO(data), context=c2pa.Context(c2pa.Settings.from_dict(settings))
    )
    try:
        store = json.loads(reader.json())
    finally:
        reader.close()
    active = store["manifests"][store["active_manifest"]]
    return {a["label"]: a["data"] for a in active["assertions"]}


def fingerprint_rows(engine: Any, turn_id: str) -> list[Any]:
    fp = IMAGE_FINGERPRINTS.c
    with engine.connect() as conn:
        return list(conn.execute(select(IMAGE_FINGERPRINTS).where(fp.turn_id == turn_id)))


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("sample1.png", "image/png"),
        ("earth_apollo17.jpg", "image/jpeg"),
        ("mars.webp", "image/webp"),
    ],
)
def test_every_signed_output_carries_its_iscc_soft_binding_and_stays_trusted(
    custody: Any, photo_bytes: dict[str, bytes], name: str, mime: str
) -> None:
    signed, turn = edit(custody, photo_bytes[name], mime, "make it teal")
    anchors = custody.services.signer.trust_anchors_pem()
    assert verify_image(signed, None, anchors).state == "Trusted"
    independent = verify_independently(signed, None, anchors)
    assert independent.ok, independent
    binding = manifest_assertions(signed, anchors)["c2pa.soft-binding"]
    assert binding["alg"] == ISCC_ALG == "io.iscc.v0"
    [block] = binding["blocks"]
    found = fingerprint(signed)
    assert found is not None and block["value"] == found.iscc  # the pixels signed are released
    assert block["value"].startswith("ISCC:EE")  # ISO 24138 Content-Code, Image, v0
    # The ledger's output.signed lists the same fingerprints; the index holds input and output.
    [signed_event] = [e for e in custody.ledger_events(turn) if e["type"] == "output.signed"]
    assert signed_event["body"]["fingerprint"] == found.to_dict()
    rows = {r.direction: r for r in fingerprint_rows(custody.services.engine, turn)}
    assert set(rows) == {"input", "output"}
    assert rows["output"].pdq == found.pdq and rows["output"].iscc == found.iscc
    assert rows["output"].tenant == "acme"
    source = fingerprint(photo_bytes[name])
    assert source is not None and rows["input"].pdq == source.pdq
    assert rows["input"].role == "parent"


def test_an_input_that_is_not_decodable_gets_no_fingerprint_and_the_turn_goes_on(
    custody: Any,
) -> None:
    assert fingerprint(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64) is None
    assert fingerprint(b"not an image") is None


def test_iscc_codes_of_a_reencoded_copy_are_near(photo_bytes: dict[str, bytes]) -> None:
    original = fingerprint(photo_bytes["P1000827.jpg"])
    image = Image.open(io.BytesIO(photo_bytes["P1000827.jpg"]))
    out = io.BytesIO()
    image.resize((image.width // 2, image.height // 2)).save(out, "JPEG", quality=70)
    copy = fingerprint(out.getvalue())
    assert original is not None and copy is not None
    assert iscc_distance(original.iscc, copy.iscc) <= 4
