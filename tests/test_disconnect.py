"""A client that goes away is recorded as what happened, not as a delivery.

The turn is released (signed, recorded) before anything is sent; if the caller has disconnected by
then — or disconnects while a stream is being sent — a ``turn.undelivered`` event follows
``turn.released`` (the ledger is append-only: a later event, never an edit). Raw sockets play
the impatient client against a slow upstream (``CUSTODY_EMULATOR_LATENCY_MS``).
"""

from __future__ import annotations

import base64
import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from governance.upstream.embedded import ThreadedServer
from tests.conftest import asgi_request_ready

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"


def _png(size: int = 32, noise: bool = False) -> bytes:
    if noise:
        img = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    else:
        img = Image.new("RGB", (size, size), (10, 120, 200))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _request(base_url: str, key: str, method: str, body: bytes) -> bytes:
    host = base_url.removeprefix("http://")
    query = "?alt=sse" if method == "streamGenerateContent" else ""
    return (
        f"POST /v1beta/models/{MODEL}:{method}{query} HTTP/1.1\r\nHost: {host}\r\n"
        f"x-goog-api-key: {key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _connect(base_url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    return sock


def _edit_body() -> bytes:
    image = base64.b64encode(_png()).decode()
    parts = [{"inlineData": {"mimeType": "image/png", "data": image}}, {"text": "make it teal"}]
    return orjson.dumps({"contents": [{"role": "user", "parts": parts}]})


def _wait_for(running: Any, type_: str, deadline_s: float = 60.0) -> list[dict[str, Any]]:
    """The events of the turn that got an event of ``type_`` (polls; no timing is asserted)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        events = running.ledger_events()
        hit = [e for e in events if e["type"] == type_]
        if hit:
            return [e for e in events if e.get("turn") == hit[0]["turn"]]
        time.sleep(0.1)
    raise AssertionError(f"no {type_} event within {deadline_s}s")


@pytest.fixture()
def slow_custody(tmp_path: Path, db_url: str) -> Iterator[Any]:
    from conftest import start_custody

    running = start_custody(tmp_path / "custody", db_url, emulator_latency_ms=1500)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent"])
def test_client_gone_before_the_answer_is_recorded_as_undelivered(
    slow_custody: Any, method: str
) -> None:
    sock = _connect(slow_custody.base_url)
    sock.sendall(_request(slow_custody.base_url, slow_custody.keys["editor"], method, _edit_body()))
    # The turn has begun (its body was read); the upstream takes 1.5 s and the caller leaves now.
    _wait_for(slow_custody, "turn.received")
    sock.close()
    events = _wait_for(slow_custody, "turn.undelivered")
    types = [e["type"] for e in events]
    assert types[-2:] == ["turn.released", "turn.undelivered"], types
    assert types.count("output.signed") == 1
    undelivered = events[-1]["body"]
    assert undelivered["stage"] == "before_send" and undelivered["events_sent"] == 0


def test_client_that_waits_is_not_recorded_as_undelivered(slow_custody: Any) -> None:
    response = httpx.post(
        f"{slow_custody.base_url}/v1beta/models/{MODEL}:generateContent",
        content=_edit_body(),
        headers={"x-goog-api-key": slow_custody.keys["editor"]},
        timeout=60,
    )
    assert response.status_code == 200
    time.sleep(0.5)
    types = [e["type"] for e in slow_custody.ledger_events(response.headers["x-custody-turn"])]
    assert types[-1] == "turn.released" and "turn.undelivered" not in types


class BigStreamUpstream:
    """Streams three chunks, each one large noisy PNG: more than socket buffers hold."""

    def __init__(self) -> None:
        self.images = [base64.b64encode(_png(1100, noise=True)).decode() for _ in range(3)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not await asgi_request_ready(scope, receive, send):
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for n, data in enumerate(self.images):
            candidate: dict[str, Any] = {
                "content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": data}}]}
            }
            if n == len(self.images) - 1:
                candidate["finishReason"] = "STOP"
            event = b"data: " + orjson.dumps({"candidates": [candidate]}) + b"\r\n\r\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def test_client_gone_mid_stream_is_recorded_with_what_was_sent(tmp_path: Path) -> None:
    from conftest import start_custody

    upstream = ThreadedServer(BigStreamUpstream()).start()
    running = start_custody(
        tmp_path / "custody", upstream_base_url=upstream.base_url, emulator="on"
    )
    try:
        body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "three big"}]}]})
        sock = _connect(running.base_url, rcvbuf=4096)
        sock.sendall(
            _request(running.base_url, running.keys["editor"], "streamGenerateContent", body)
        )
        _wait_for(running, "turn.released")
        sock.recv(1024)  # the response has started: the caller now goes away mid-stream
        time.sleep(0.5)
        sock.close()
        events = _wait_for(running, "turn.undelivered")
        types = [e["type"] for e in events]
        assert types[-2:] == ["turn.released", "turn.undelivered"], types
        undelivered = events[-1]["body"]
        assert undelivered["stage"] == "mid_stream"
        assert undelivered["events_sent"] < undelivered["events_total"] == 3
    finally:
        running.stop()
        upstream.stop()


def test_client_gone_before_its_body_is_read_is_recorded_as_a_refusal(slow_custody: Any) -> None:
    """Half a body, then the connection closes: a recorded 499 refusal, never a 500."""
    body = _edit_body()
    request = _request(slow_custody.base_url, slow_custody.keys["editor"], "generateContent", body)
    sock = _connect(slow_custody.base_url)
    sock.sendall(request[: len(request) - len(body) // 2])
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    events = _wait_for(slow_custody, "request.refused")
    refused = events[-1]["body"]
    assert (refused["code"], refused["status"]) == (499, "CANCELLED"), refused
    assert refused["reason"] == "CLIENT_CLOSED_REQUEST"
    assert not [e for e in slow_custody.ledger_events() if e["type"] == "turn.received"]
