"""Bad input gets a clear Gemini-shaped 4xx, is recorded, and the server stays up."""

from __future__ import annotations

import base64
import struct
import zlib

import httpx
import orjson
import pytest

MODEL_URL = "/v1beta/models/gemini-2.5-flash-image:generateContent"


def _body(parts: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"contents": [{"role": "user", "parts": parts}]})


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that declares ``width`` x ``height`` pixels (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _post(custody, body: bytes, key: str | None = "editor", **headers: str) -> httpx.Response:
    if key is not None:
        headers["x-goog-api-key"] = custody.keys.get(key, key)
    return httpx.post(custody.base_url + MODEL_URL, content=body, headers=headers, timeout=60)


def _assert_envelope(resp: httpx.Response, code: int, status: str) -> dict[str, object]:
    assert resp.status_code == code, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["status"] == status
    assert isinstance(error["message"], str) and len(error["message"]) > 20
    return error


def test_missing_key_is_401(custody) -> None:
    _assert_envelope(_post(custody, _body([{"text": "hi"}]), key=None), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize("key", ["ck_0000_nope", "AIzaSyNotACustodyKey", "ck_"])
def test_unknown_key_is_403(custody, key) -> None:
    _assert_envelope(_post(custody, _body([{"text": "hi"}]), key=key), 403, "PERMISSION_DENIED")


def test_key_in_query_and_bearer_are_accepted(custody) -> None:
    body = _body([{"text": "a red bicycle"}])
    key = custody.keys["editor"]
    by_query = httpx.post(f"{custody.base_url}{MODEL_URL}?key={key}", content=body, timeout=60)
    bearer = httpx.post(
        custody.base_url + MODEL_URL,
        content=body,
        timeout=60,
        headers={"authorization": f"Bearer {key}"},
    )
    assert by_query.status_code == 200 and bearer.status_code == 200


def test_body_over_the_limit_is_413(tmp_path) -> None:
    from conftest import start_custody

    small = start_custody(tmp_path / "c", max_request_bytes=10_000)
    try:
        big = _body([{"text": "x" * 20_000}])
        _assert_envelope(_post(small, big), 413, "INVALID_ARGUMENT")
        assert _post(small, _body([{"text": "a red bicycle"}])).status_code == 200
    finally:
        import asyncio

        small.server.stop()
        asyncio.run(small.services.aclose())


def test_broken_base64_is_400_and_recorded(custody) -> None:
    body = _body(
        [
            {"inlineData": {"mimeType": "image/png", "data": "not base64 at all!!"}},
            {"text": "make it teal"},
        ]
    )
    error = _assert_envelope(_post(custody, body), 400, "INVALID_ARGUMENT")
    assert "base64" in error["message"]
    failed = [e for e in custody.ledger_events() if e["type"] == "turn.failed"]
    assert failed[-1]["body"]["reason"] == "INVALID_BASE64"
    assert failed[-1]["body"].get("request"), "the rejected request is kept (as a commitment)"


def test_non_image_declared_as_png_is_400(custody) -> None:
    data = base64.b64encode(b"%PDF-1.7 this is not a picture").decode()
    body = _body([{"inlineData": {"mimeType": "image/png", "data": data}}, {"text": "edit"}])
    error = _assert_envelope(_post(custody, body), 400, "INVALID_ARGUMENT")
    assert "not a image/png image" in error["message"]


def test_decompression_bomb_is_refused_from_its_header(custody) -> None:
    data = base64.b64encode(_png_header_only(100_000, 100_000)).decode()
    body = _body([{"inlineData": {"mimeType": "image/png", "data": data}}, {"text": "edit"}])
    error = _assert_envelope(_post(custody, body), 400, "INVALID_ARGUMENT")
    assert "decompression" in error["message"]


def test_invalid_json_and_missing_contents_are_400(custody) -> None:
    _assert_envelope(_post(custody, b"{not json"), 400, "INVALID_ARGUMENT")
    _assert_envelope(_post(custody, b"{}"), 400, "INVALID_ARGUMENT")


def test_unknown_method_is_404_in_gemini_shape(custody) -> None:
    resp = httpx.post(
        custody.base_url + "/v1beta/models/gemini-2.5-flash-image:embedContent",
        content=b"{}",
        headers={"x-goog-api-key": custody.keys["editor"]},
    )
    _assert_envelope(resp, 404, "NOT_FOUND")


def test_server_stays_up_after_bad_input(custody) -> None:
    for body in (b"\xff\xfe", b"[]", _body([{"inlineData": {"mimeType": "image/png"}}])):
        assert 400 <= _post(custody, body).status_code < 500
    assert httpx.get(custody.base_url + "/healthz").json() == {"status": "ok"}
    assert _post(custody, _body([{"text": "a red bicycle"}])).status_code == 200


def test_url_safe_base64_and_snake_case_fields_are_accepted(custody, photo_bytes) -> None:
    data = base64.urlsafe_b64encode(photo_bytes["sample1.png"]).decode().rstrip("=")
    body = _body([{"inline_data": {"mime_type": "image/png", "data": data}}, {"text": "grayscale"}])
    resp = _post(custody, body)
    assert resp.status_code == 200, resp.text
