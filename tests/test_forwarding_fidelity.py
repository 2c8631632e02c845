"""Unknown fields and thought signatures survive the round trip byte for byte.

A capturing upstream stands where Gemini would: it records the exact bytes Custody forwards and
answers with fields Custody has never heard of. Only the image data may change (it is signed).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from PIL import Image

from governance.upstream.embedded import ThreadedServer

SIGNATURE = base64.b64encode(bytes(range(256)) * 3).decode()  # opaque bytes, any value


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


UPSTREAM_REPLY = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "thinking...", "thought": True},
                    {
                        "text": "Here it is.",
                        "thoughtSignature": SIGNATURE,
                        "futurePartField": {"x": [1, 2]},
                    },
                    {
                        "inlineData": {
                            "mimeType": "image/png",
                            "data": base64.b64encode(_png()).decode(),
                        },
                        "thoughtSignature": SIGNATURE[::-1],
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
            "futureCandidateField": "kept",
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 12,
        "candidatesTokenCount": 1290,
        "totalTokenCount": 1302,
    },
    "modelVersion": "capture-upstream-1",
    "responseId": "abc123",
    "futureTopLevel": {"nested": [True, None, 1.5, "s"]},
}


@pytest.fixture()
def capture_upstream() -> Iterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []
    app = FastAPI()

    @app.post("/{version}/models/{model_action}")
    async def generate(version: str, model_action: str, request: Request) -> Response:
        seen.append(
            {
                "body": await request.body(),
                "headers": dict(request.headers),
                "path": request.url.path,
                "query": str(request.url.query),
            }
        )
        if model_action.endswith(":streamGenerateContent"):
            first = {k: v for k, v in UPSTREAM_REPLY.items() if k != "usageMetadata"}
            chunks = [
                first,
                {
                    "usageMetadata": UPSTREAM_REPLY["usageMetadata"],
                    "candidates": [{"finishReason": "STOP", "index": 0}],
                },
            ]
            sse = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)
            return Response(sse, media_type="text/event-stream")
        return Response(orjson.dumps(UPSTREAM_REPLY), media_type="application/json")

    @app.get("/{version}/models")
    async def models(version: str) -> dict[str, list[object]]:
        return {"models": []}

    server = ThreadedServer(app).start()
    try:
        yield server.base_url, seen
    finally:
        server.stop()


@pytest.fixture()
def custody_over_capture(tmp_path: Path, capture_upstream):
    from conftest import start_custody

    base_url, seen = capture_upstream
    running = start_custody(
        tmp_path / "c", upstream_base_url=base_url, upstream_api_key="upstream-secret-123"
    )
    try:
        yield running, seen
    finally:
        running.stop()


REQUEST = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "make it teal"},
                {
                    "inline_data": {
                        "mime_type": "image/png",
                        "data": base64.urlsafe_b64encode(_png()).decode(),
                    }
                },
            ],
        },
        {
            "role": "model",
            "parts": [{"text": "ok", "thoughtSignature": SIGNATURE, "unknownPartField": 7}],
        },
        {"role": "user", "parts": [{"text": "now flatten it"}], "unknownContentField": "z"},
    ],
    "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "futureKnob": 0.25},
    "someFutureTopLevelField": {"deep": [1, {"two": 2}]},
}


def test_request_reaches_upstream_byte_for_byte_and_response_keeps_every_field(
    custody_over_capture,
) -> None:
    custody, seen = custody_over_capture
    raw = orjson.dumps(REQUEST) + b"  \n"  # odd whitespace too
    resp = httpx.post(
        custody.base_url + "/v1beta/models/gemini-3-pro-image-preview:generateContent",
        content=raw,
        headers={"x-goog-api-key": custody.keys["editor"], "content-type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert seen[-1]["body"] == raw, "the upstream must receive the caller's exact bytes"
    assert seen[-1]["headers"]["x-goog-api-key"] == "upstream-secret-123"
    assert custody.keys["editor"] not in str(seen[-1]), "the caller's Custody key never leaves"

    got = resp.json()
    expected = orjson.loads(orjson.dumps(UPSTREAM_REPLY))
    got_image = got["candidates"][0]["content"]["parts"][2]["inlineData"].pop("data")
    expected["candidates"][0]["content"]["parts"][2]["inlineData"].pop("data")
    assert got == expected, "every field but the image data comes back exactly"
    assert b"c2pa" in base64.b64decode(got_image)


def test_stream_keeps_every_field_and_signature(custody_over_capture) -> None:
    custody, seen = custody_over_capture
    raw = orjson.dumps(REQUEST)
    resp = httpx.post(
        custody.base_url + "/v1beta/models/gemini-3-pro-image-preview:streamGenerateContent",
        params={"alt": "sse"},
        content=raw,
        headers={"x-goog-api-key": custody.keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 200
    assert seen[-1]["body"] == raw and "alt=sse" in seen[-1]["query"]
    assert "key=" not in seen[-1]["query"]
    events = [orjson.loads(line[6:]) for line in resp.text.split("\r\n\r\n") if line.strip()]
    parts = events[0]["candidates"][0]["content"]["parts"]
    assert parts[1]["thoughtSignature"] == SIGNATURE
    assert parts[2]["thoughtSignature"] == SIGNATURE[::-1]
    assert events[0]["futureTopLevel"] == UPSTREAM_REPLY["futureTopLevel"]
    assert events[1]["usageMetadata"] == UPSTREAM_REPLY["usageMetadata"]


def test_upstream_secret_is_in_no_record(custody_over_capture) -> None:
    custody, seen = custody_over_capture
    resp = httpx.post(
        custody.base_url + "/v1beta/models/gemini-2.5-flash-image:generateContent",
        content=orjson.dumps(REQUEST),
        headers={"x-goog-api-key": custody.keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 200 and seen, "the turn must reach the upstream to test its secret"
    assert "upstream-secret-123" not in str(custody.ledger_events())
    for path in Path(custody.services.settings.data_dir).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert b"upstream-secret-123" not in path.read_bytes(), path
