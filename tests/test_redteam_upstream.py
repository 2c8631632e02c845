"""Held-out malformed upstream answers (issue 14): shapes the builders' corpus does not hold.

The corpus in ``tests/test_upstream_malformed.py`` fixed what each known shape must give. These
are the checker's: images under unexpected keys or with extra keys, raster files that are odd but
real (trailing data, animated WebP, a 1×1 GIF, CMYK JPEG, a declared-dimension bomb, a PNG with a
forged ``caBX`` chunk), structures that bend the format (``candidates`` as a string, 10,000 empty
parts, JSON unicode escapes in base64, an image split over two stream chunks, a stream chunk
that mixes an error with candidates). For each, whatever Custody decides, the invariant holds:
either HTTP 200 with every inline blob a C2PA-signed image that verifies under our root, and
``turn.released`` counting exactly those; or a Gemini-shaped error with nothing of the response,
recorded as ``turn.failed`` with the same code. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from governance.provenance.verify import verify_image
from governance.upstream.embedded import ThreadedServer
from tests.conftest import asgi_request_ready
from tests.test_upstream_malformed import (
    PNG,
    TEXT,
    Shape,
    _inline_blobs,
    _pg_database,
    _released_documents,
    b64,
    img,
    resp,
    stream,
    unary,
)

MODEL = "gemini-2.5-flash-image"


def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int) -> bytes:
    """A structurally valid PNG whose header declares ``width`` × ``height`` (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _png_with_forged_cabx() -> bytes:
    """A PNG carrying a caBX chunk that names a manifest store 'urn:c2pa:custody' signs nothing."""
    jumbf = b"\x00\x00\x00\x20jumb\x00\x00\x00\x18jumdc2pa\x00\x11\x00\x10urn:c2pa:custody"
    return PNG[:33] + _chunk(b"caBX", jumbf) + PNG[33:]


RGB = Image.new("RGB", (40, 30), (30, 160, 90))
JPEG = _encoded(RGB, "JPEG")
CMYK_JPEG = _encoded(Image.new("CMYK", (40, 30), (10, 200, 30, 5)), "JPEG")
GIF_1X1 = _encoded(Image.new("P", (1, 1)), "GIF")
ANIMATED_WEBP = _encoded(
    RGB, "WEBP", save_all=True, append_images=[Image.new("RGB", (40, 30), (200, 0, 0))], duration=90
)
BMP = _encoded(RGB, "BMP")
TIFF = _encoded(RGB, "TIFF")
HTML = b"<html><script>alert(document.domain)</script></html>"

_escaped = b64(PNG)
_unicode_escaped = (
    b'{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"'
    + "".join(f"\\u{ord(c):04x}" if i % 3 == 0 else c for i, c in enumerate(_escaped)).encode()
    + b'"}}]},"finishReason":"STOP"}]}'
)
_split = b64(PNG)
_half = len(_split) // 2 // 4 * 4 + 1  # not on a 4-character boundary: neither half decodes
_content_level = resp(TEXT)
_content_level["candidates"][0]["content"]["inlineData"] = {
    "mimeType": "image/png",
    "data": b64(PNG),
}

SHAPES: dict[str, Shape] = {
    "image-under-unexpected-part-key": unary(resp({"image": img(PNG)})),
    "image-in-function-call-args": unary(
        resp({"functionCall": {"name": "show", "args": img(PNG)}}, img(PNG))
    ),
    "inlineData-with-extra-keys": unary(
        resp({"inlineData": {"mimeType": "image/png", "data": b64(PNG), "displayName": "x"}})
    ),
    "inlineData-beside-parts": unary(_content_level),
    "image-at-the-response-root": unary({**resp(img(PNG)), "inlineData": {"data": b64(PNG)}}),
    "jpeg-with-trailing-html": unary(resp(img(JPEG + HTML, "image/jpeg"))),
    "animated-webp": unary(resp(img(ANIMATED_WEBP, "image/webp"))),
    "gif-1x1": unary(resp(img(GIF_1X1, "image/gif"))),
    "cmyk-jpeg": unary(resp(img(CMYK_JPEG, "image/jpeg"))),
    "bmp": unary(resp(img(BMP, "image/bmp"))),
    "tiff": unary(resp(img(TIFF, "image/tiff"))),
    "dimension-bomb-header": unary(resp(img(_png_declaring(200_000, 200_000)))),
    "png-with-forged-cabx": unary(resp(img(_png_with_forged_cabx()))),
    "candidates-a-string": unary({"candidates": "iVBORw0KGgo=", "modelVersion": "m"}),
    "candidates-null-with-image-beside": unary(
        {"candidates": None, "content": {"parts": [img(PNG)]}}
    ),
    "ten-thousand-empty-parts": unary(resp(*([{}] * 10_000), img(PNG))),
    "nested-list-of-parts": unary(
        {"candidates": [{"content": {"parts": [[img(PNG)]]}, "finishReason": "STOP"}]}
    ),
    "unicode-escapes-in-base64": unary(_unicode_escaped),
    "base64-with-line-breaks": unary(
        resp({"inlineData": {"mimeType": "image/png", "data": base64.encodebytes(PNG).decode()}})
    ),
    "data-as-a-list": unary(resp({"inlineData": {"mimeType": "image/png", "data": [b64(PNG)]}})),
    "mime-type-a-list": unary(resp({"inlineData": {"mimeType": ["image/png"], "data": b64(PNG)}})),
    "inlineData-null-inline_data-image": unary(
        resp({"inlineData": None, "inline_data": {"mime_type": "image/png", "data": b64(PNG)}})
    ),
    "four-hundred-images": unary(resp(*[img(PNG) for _ in range(400)])),
    "stream-image-split-over-chunks": stream(
        resp({"inlineData": {"mimeType": "image/png", "data": _split[:_half]}}, finish=None),
        resp({"inlineData": {"mimeType": "image/png", "data": _split[_half:]}}),
    ),
    "stream-chunk-mixing-error-and-candidates": stream(
        resp(TEXT, finish=None),
        {
            **resp(img(PNG)),
            "error": {"code": 503, "message": "half-broken", "status": "UNAVAILABLE"},
        },
    ),
    "stream-chunk-with-candidates-an-object": stream(
        resp(img(PNG), finish=None), {"candidates": {"0": resp(img(PNG))["candidates"][0]}}
    ),
}

# A third set, written after the two above by a session that had not seen them (issue 14's
# closing check): prefixes, casing and parameters on the declared type, an SVG or a URL beside a
# real image, a unary body in the stream's JSON-array form, a byte-order mark, images after the
# finish reason, extra padding.
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
SHAPES.update(
    {
        "data-url-prefix": unary(
            resp(
                {
                    "inlineData": {
                        "mimeType": "image/png",
                        "data": "data:image/png;base64," + b64(PNG),
                    }
                }
            )
        ),
        "upper-case-mime-type": unary(resp(img(PNG, "IMAGE/PNG"))),
        "mime-type-with-parameters": unary(resp(img(PNG, "image/png; charset=binary"))),
        "svg-declared-as-png": unary(resp(img(SVG, "image/png"))),
        "png-candidate-and-svg-candidate": unary(
            {
                "candidates": [
                    resp(img(PNG))["candidates"][0],
                    {**resp(img(SVG, "image/svg+xml"))["candidates"][0], "index": 1},
                ]
            }
        ),
        "inlineData-and-fileData-in-one-part": unary(
            resp(
                {
                    **img(PNG),
                    "fileData": {"fileUri": "https://evil.example/x.png", "mimeType": "image/png"},
                }
            )
        ),
        "unary-body-as-a-json-array": unary(orjson.dumps([resp(img(PNG))])),
        "byte-order-mark-before-the-json": unary(b"\xef\xbb\xbf" + orjson.dumps(resp(img(PNG)))),
        "stream-images-after-the-finish-reason": stream(resp(img(PNG)), resp(img(PNG))),
        "extra-base64-padding": unary(
            resp({"inlineData": {"mimeType": "image/png", "data": b64(PNG) + "===="}})
        ),
    }
)


_last = orjson.dumps(resp(img(PNG)))
# Streams as raw bytes on the wire: SSE variations a real server may send.
RAW_STREAMS: dict[str, bytes] = {
    "sse-comments-and-event-names": b": keep-alive\r\n\r\nevent: message\r\ndata: "
    + _last
    + b"\r\n\r\n",
    "sse-lf-separators": b"data: "
    + orjson.dumps(resp(TEXT, finish=None))
    + b"\n\ndata: "
    + _last
    + b"\n\n",
    "sse-data-over-two-lines": b"data: " + _last[:40] + b"\ndata: " + _last[40:] + b"\r\n\r\n",
    "sse-no-space-after-colon": b"data:" + _last + b"\r\n\r\n",
    "sse-trailing-garbage-line": b"data: " + _last + b"\r\n\r\ngarbage without a field\r\n\r\n",
}
for _name in RAW_STREAMS:
    SHAPES[_name] = Shape(streamed=True)


class HeldOutUpstream:
    """An ASGI app answering each request with the shape its ``x-emulator-fault`` header names."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not await asgi_request_ready(scope, receive, send):
            return
        shape = SHAPES[dict(scope["headers"])[b"x-emulator-fault"].decode()]
        if shape.body is not None:
            start = {"type": "http.response.start", "status": shape.status}
            start["headers"] = [(b"content-type", b"application/json")]
            await send(start)
            await send({"type": "http.response.body", "body": shape.body})
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        name = dict(scope["headers"])[b"x-emulator-fault"].decode()
        if name in RAW_STREAMS:
            await send({"type": "http.response.body", "body": RAW_STREAMS[name]})
            return
        for event in shape.events:
            chunk = b"data: " + event + b"\r\n\r\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    server = ThreadedServer(HeldOutUpstream()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(
    request: pytest.FixtureRequest,
    upstream: ThreadedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    from tests.conftest import start_custody

    data_dir: Path = tmp_path_factory.mktemp(f"redteam-upstream-{request.param}")
    databases = _pg_database() if request.param == "postgres" else iter([""])
    url = next(databases)
    running = start_custody(data_dir, url, upstream_base_url=upstream.base_url, emulator="on")
    try:
        yield running
    finally:
        running.stop()
        if hasattr(databases, "close"):
            databases.close()


def _call(gateway: Any, name: str, shape: Shape) -> httpx.Response:
    method = "streamGenerateContent" if shape.stream else "generateContent"
    return httpx.post(
        f"{gateway.base_url}/v1beta/models/{MODEL}:{method}",
        params={"alt": "sse"} if shape.stream else {},
        content=orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "a red square"}]}]}),
        headers={
            "x-goog-api-key": gateway.keys["editor"],
            "content-type": "application/json",
            "x-emulator-fault": name,
        },
        timeout=120,
    )


@pytest.mark.parametrize("name", list(SHAPES))
def test_held_out_shape_is_fully_signed_or_refused_and_recorded(gateway: Any, name: str) -> None:
    shape = SHAPES[name]
    since = gateway.services.ledger.size()
    response = _call(gateway, name, shape)
    events = [e for e in gateway.ledger_events() if e["index"] >= since and e.get("turn")]
    assert len({e["turn"] for e in events}) == 1, [e["type"] for e in events]
    types = [e["type"] for e in events]
    assert "upstream.returned" in types, types
    if response.status_code == 500:  # only the upstream's own 500, passed on as its error
        assert response.json()["error"]["details"][0]["reason"] == "UPSTREAM_ERROR"
    if response.status_code == 200:
        documents = _released_documents(response, shape.stream)
        blobs = [b for d in documents for b in _inline_blobs(d)]
        anchors = gateway.services.signer.trust_anchors_pem()
        for blob in blobs:
            assert isinstance(blob, dict) and isinstance(blob.get("data"), str), blob
            data = base64.b64decode(blob["data"])
            result = verify_image(data, None, anchors)
            assert result.state == "Trusted", (name, result.state, result.reasons)
        assert HTML not in response.content and b64(HTML).encode() not in response.content
        assert SVG not in response.content and b64(SVG).encode() not in response.content
        released = next(e for e in events if e["type"] == "turn.released")
        assert released["body"]["outputs"] == len(blobs) == types.count("output.signed")
        assert "turn.failed" not in types
    else:
        assert response.headers["content-type"].startswith("application/json"), response.text
        document = response.json()
        assert set(document) == {"error"}, "nothing of the upstream's response went out"
        error = document["error"]
        assert error["code"] == response.status_code and error["status"] and error["message"]
        assert 400 <= response.status_code < 600
        failed = next(e for e in events if e["type"] == "turn.failed")
        assert failed["body"]["code"] == response.status_code
        assert "turn.released" not in types and "output.signed" not in types


def test_a_forged_custody_manifest_is_never_released_as_ours(gateway: Any) -> None:
    response = _call(gateway, "png-with-forged-cabx", SHAPES["png-with-forged-cabx"])
    if response.status_code == 200:
        (blob,) = list(_inline_blobs(response.json()))
        data = base64.b64decode(blob["data"])
        assert (
            b"urn:c2pa:custody" not in data
            or verify_image(data, None, gateway.services.signer.trust_anchors_pem()).state
            == "Trusted"
        )
