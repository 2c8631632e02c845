"""No caller- or upstream-controlled value overflows a ledger leaf (64 KiB), and nothing is lost.

500 input images, 500 output images and a 200 KB upstream error message each get a clear answer
and a complete record: oversized values move to committed blobs (the commitment in the leaf, the
bytes in the blob store), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from governance.pipeline.leaf_bounds import MAX_FIELD_BYTES, PREVIEW_CHARS, bound_body
from governance.upstream.embedded import ThreadedServer
from storage.ledger.leaf import MAX_LEAF_BYTES
from tests.conftest import asgi_request_ready

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"


def _png(n: int) -> bytes:
    img = Image.new("RGB", (8, 8), (n % 256, (n * 7) % 256, (n * 13) % 256))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


class BulkUpstream:
    """``x-emulator-fault: images:N`` answers N images; ``error:N`` a 429 with an N-char message."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not await asgi_request_ready(scope, receive, send):
            return
        kind, _, count = dict(scope["headers"])[b"x-emulator-fault"].decode().partition(":")
        n = int(count)
        if kind == "images":
            parts = [
                {
                    "inlineData": {
                        "mimeType": "image/png",
                        "data": base64.b64encode(_png(i)).decode(),
                    }
                }
                for i in range(n)
            ]
            status, doc = (
                200,
                {"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]},
            )
        else:
            message = "Quota exceeded for this project; " + "x" * n
            status, doc = (
                429,
                {"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED"}},
            )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(doc)})


@pytest.fixture()
def bulk_gateway(tmp_path: Path, db_url: str) -> Iterator[Any]:
    from conftest import start_custody

    upstream = ThreadedServer(BulkUpstream()).start()
    running = start_custody(
        tmp_path / "custody", db_url, upstream_base_url=upstream.base_url, emulator="on"
    )
    try:
        yield running
    finally:
        running.stop()
        upstream.stop()


def _post(gateway: Any, body: dict[str, Any], fault: str | None = None) -> httpx.Response:
    headers = {"x-goog-api-key": gateway.keys["editor"], "content-type": "application/json"}
    if fault:
        headers["x-emulator-fault"] = fault
    return httpx.post(
        f"{gateway.base_url}/v1beta/models/{MODEL}:generateContent",
        content=orjson.dumps(body),
        headers=headers,
        timeout=300,
    )


def _all_leaves_fit(gateway: Any) -> None:
    ledger = gateway.services.ledger
    for entry in ledger.entries(0, ledger.size()):
        assert len(entry.leaf) <= MAX_LEAF_BYTES


def _closing(events: list[dict[str, Any]]) -> dict[str, Any]:
    closing = [e for e in events if e["type"] in ("turn.released", "turn.failed")]
    assert len(closing) == 1, [e["type"] for e in events]
    return closing[0]


def test_500_input_images_get_an_answer_and_a_complete_bounded_record(
    tmp_path: Path, db_url: str
) -> None:
    from conftest import start_custody

    running = start_custody(tmp_path / "custody", db_url)  # the built-in emulator
    try:
        parts: list[dict[str, Any]] = [
            {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(_png(i)).decode()}}
            for i in range(500)
        ]
        parts.append({"text": "apply the same warm tone to all of these"})
        response = _post(running, {"contents": [{"role": "user", "parts": parts}]})
        assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
        if response.status_code != 200:
            assert response.json()["error"]["message"]
        turn = response.headers.get("x-custody-turn")
        events = running.ledger_events(turn) if turn else running.ledger_events()
        received = next(e for e in events if e["type"] == "turn.received")
        body = received["body"]
        assert "images" not in body and body["images_count"] == 500
        listed = orjson.loads(running.services.content.commitments.open(body["images_blob"]))
        assert len(listed) == 500 and listed[0]["mime_type"] == "image/png"
        closing = _closing(events)
        assert closing["type"] == (
            "turn.released" if response.status_code == 200 else "turn.failed"
        )
        _all_leaves_fit(running)
    finally:
        running.stop()


def test_500_output_images_are_all_signed_and_recorded(bulk_gateway: Any) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "500 variations"}]}]}
    response = _post(bulk_gateway, body, "images:500")
    assert response.status_code == 200, response.text[:400]
    parts = response.json()["candidates"][0]["content"]["parts"]
    assert len(parts) == 500
    events = bulk_gateway.ledger_events(response.headers["x-custody-turn"])
    assert sum(1 for e in events if e["type"] == "output.signed") == 500
    returned = next(e for e in events if e["type"] == "upstream.returned")
    assert returned["body"]["images"] == 500
    assert _closing(events)["body"]["outputs"] == 500
    _all_leaves_fit(bulk_gateway)


def test_a_200_kb_upstream_error_message_keeps_its_code_and_its_full_text(
    bulk_gateway: Any,
) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "a red square"}]}]}
    response = _post(bulk_gateway, body, "error:200000")
    assert response.status_code == 429, response.text[:300]
    error = response.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and len(error["message"]) > 200_000
    events = bulk_gateway.ledger_events()
    returned = next(e for e in events if e["type"] == "upstream.returned")
    recorded = returned["body"]["error"]
    assert recorded["code"] == 429 and recorded["message_chars"] == len(error["message"])
    assert len(recorded["message"]) == PREVIEW_CHARS
    full = bulk_gateway.services.content.commitments.open(recorded["message_full"])
    assert full.decode() == error["message"]
    failed = _closing(events)
    assert failed["type"] == "turn.failed" and failed["body"]["code"] == 429
    assert failed["body"]["message_chars"] == len(error["message"])
    _all_leaves_fit(bulk_gateway)


def test_bound_body_leaves_small_bodies_alone_and_spills_large_values() -> None:
    committed: list[bytes] = []

    def commit(data: bytes) -> str:
        committed.append(data)
        return f"salted-sha256:c{len(committed)}"

    small = {"status": 200, "reasons": ["ok"]}
    assert bound_body(small, commit) is small and not committed
    large = {
        "keep": 1,
        "text": "é" * 30_000,
        "items": [{"n": i} for i in range(5_000)],
        "nested": {"message": "m" * 50_000, "code": 7},
        "wide": {f"k{i}": i for i in range(5_000)},
    }
    out = bound_body(large, commit)
    assert out["keep"] == 1 and out["text"] == "é" * PREVIEW_CHARS and out["text_chars"] == 30_000
    assert out["items_count"] == 5_000 and orjson.loads(committed[1]) == large["items"]
    assert out["nested"]["code"] == 7 and out["nested"]["message_chars"] == 50_000
    assert "wide" not in out and out["wide_bytes"] > MAX_FIELD_BYTES
    assert len(orjson.dumps(out)) < 16_384
