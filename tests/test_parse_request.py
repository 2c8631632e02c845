"""Reading Gemini requests: both base64 alphabets, both field spellings, roles, bad images."""

from __future__ import annotations

import base64
import io

import orjson
import pytest
from PIL import Image

from governance.pipeline.errors import TurnError
from governance.pipeline.parse import decode_base64, parse_request


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def _part(data: bytes, *, snake: bool = False, urlsafe: bool = False) -> dict[str, object]:
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode().rstrip("=")
    if snake:
        return {"inline_data": {"mime_type": "image/png", "data": enc}}
    return {"inlineData": {"mimeType": "image/png", "data": enc}}


def _parse(contents: list[dict[str, object]], max_pixels: int = 10**8):
    return parse_request(orjson.dumps({"contents": contents}), max_pixels=max_pixels)


def test_both_base64_alphabets_decode_to_the_same_bytes() -> None:
    data = bytes(range(256)) * 4  # contains + and / in standard base64
    std = base64.b64encode(data).decode()
    url = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "+" in std and "-" in url
    assert decode_base64(std, "x") == decode_base64(url, "x") == data


def test_snake_case_and_camel_case_fields_are_read_alike() -> None:
    png = _png()
    a = _parse([{"role": "user", "parts": [_part(png), {"text": "teal"}]}])
    b = _parse(
        [{"role": "user", "parts": [_part(png, snake=True, urlsafe=True), {"text": "teal"}]}]
    )
    assert a.images[0].sha256 == b.images[0].sha256
    assert a.images[0].width == 8 and a.images[0].height == 6
    assert a.prompt == b.prompt == "teal"


def test_roles_parent_reference_and_mask() -> None:
    png = _png()
    parsed = _parse(
        [
            {
                "role": "user",
                "parts": [
                    _part(png),
                    {"text": "mask:"},
                    _part(_png((4, 4))),
                    _part(_png((5, 5))),
                    {"text": "edit"},
                ],
            }
        ]
    )
    assert [i.role for i in parsed.images] == ["parent", "mask", "reference"]


def test_in_a_chat_the_last_history_image_is_the_parent() -> None:
    png = _png()
    parsed = _parse(
        [
            {"role": "user", "parts": [_part(png), {"text": "make it teal"}]},
            {"role": "model", "parts": [_part(_png((9, 9)))]},
            {"role": "user", "parts": [{"text": "now flatten it"}]},
        ]
    )
    assert parsed.prompt == "now flatten it"
    parent = [i for i in parsed.images if i.role == "parent"]
    assert len(parent) == 1 and parent[0].from_model and parent[0].width == 9


@pytest.mark.parametrize(
    ("data", "mime", "reason"),
    [
        (b"GIF89a....", "image/png", "MIME_TYPE_MISMATCH"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "image/png", "INVALID_IMAGE"),
        (b"anything", "image/tiff", "UNSUPPORTED_MIME_TYPE"),
    ],
)
def test_images_that_are_not_what_they_claim_are_refused(data, mime, reason) -> None:
    part = {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}
    with pytest.raises(TurnError) as caught:
        _parse([{"role": "user", "parts": [part]}])
    assert caught.value.code == 400 and caught.value.reason == reason


def test_pixel_limit_is_enforced_from_the_header() -> None:
    with pytest.raises(TurnError) as caught:
        _parse([{"role": "user", "parts": [_part(_png((100, 100)))]}], max_pixels=5_000)
    assert caught.value.reason == "IMAGE_TOO_LARGE"


def test_missing_contents_and_bad_json() -> None:
    for body in (b"{}", b"[1]", b"{bad"):
        with pytest.raises(TurnError) as caught:
            parse_request(body, max_pixels=10)
        assert caught.value.code == 400
