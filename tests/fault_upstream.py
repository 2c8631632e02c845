"""A Gemini upstream that fails on cue, on a real loopback socket (plain HTTP/1.1, no framework).

Raw sockets, because the faults live below HTTP: a connection reset (RST, no response), a
chunked stream cut before its terminating chunk, a read that never comes. Each request names a
script in its ``x-emulator-fault`` header (Custody forwards that header to an upstream marked as
an emulator): ``<id>:<step>,<step>,...``. The n-th request of one id plays the n-th step (the
last step repeats). Steps:

=================  ==============================================================================
``ok``             HTTP 200: a text part and a PNG (SSE events when the path streams)
``500`` ``503``    Gemini's error envelope with that code
``429:D``          429 RESOURCE_EXHAUSTED with ``google.rpc.RetryInfo`` ``retryDelay: "D"``
``429``            429 without RetryInfo (a daily quota)
``slow:S``         sleep S seconds, then ``ok``
``reset``          read the request, then reset the connection (SO_LINGER 0): no response at all
``malformed``      HTTP 200 whose body is not JSON
``cut``            a stream: the first SSE event in a chunked body, then the connection closes
``badimage``       HTTP 200 whose image part is random bytes declared as image/png
=================  ==============================================================================

``requests(id)`` counts what arrived for a script, so a test sees how many attempts were made.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from typing import Any

import orjson
from PIL import Image

from tests.http_wire import read_message


def _png() -> bytes:
    img = Image.new("RGB", (48, 32), (40, 120, 200))
    for x in range(48):
        img.putpixel((x, x % 32), (x * 5, 250 - x * 5, 90))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()
TEXT_PART = {"text": "Here is the edit. [fault upstream]"}


def _answer(image: bytes = PNG, finish: str | None = "STOP") -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {
            "role": "model",
            "parts": [
                TEXT_PART,
                {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}},
            ],
        },
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "modelVersion": "fault-upstream-1",
        "responseId": "fault-1",
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1290,
                          "totalTokenCount": 1293},
    }  # fmt: skip


def _error(code: int, status: str, message: str, details: list[Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


class _Handler(socketserver.BaseRequestHandler):
    server: FaultUpstream

    def handle(self) -> None:
        sock: socket.socket = self.request
        head, _body = _read_request(sock)
        if head is None:
            return
        request_line, headers = head
        path = request_line.split(" ")[1]
        script = headers.get("x-emulator-fault", "none:ok")
        script_id, _, steps_text = script.partition(":")
        steps = steps_text.split(",")
        with self.server.lock:
            n = self.server.counts[script_id]
            self.server.counts[script_id] += 1
        step = steps[min(n, len(steps) - 1)]
        self._play(sock, step, "streamGenerateContent" in path)

    def _play(self, sock: socket.socket, step: str, streamed: bool) -> None:
        kind, _, arg = step.partition(":")
        if kind == "slow":
            time.sleep(float(arg))
            kind = "ok"
        if kind == "ok":
            if streamed:
                first = _answer(finish=None)
                first["candidates"][0]["content"]["parts"] = [TEXT_PART]
                last = _answer()
                last["candidates"][0]["content"]["parts"] = last["candidates"][0]["content"][
                    "parts"
                ][1:]
                _send_sse(sock, [first, last])
            else:
                _send(sock, 200, orjson.dumps(_answer()))
        elif kind in ("500", "503"):
            status = "INTERNAL" if kind == "500" else "UNAVAILABLE"
            _send(sock, int(kind), _error(int(kind), status, f"fault upstream: {kind}"))
        elif kind == "429":
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": arg}]
            _send(
                sock,
                429,
                _error(
                    429, "RESOURCE_EXHAUSTED", "fault upstream: quota", details if arg else None
                ),
            )
        elif kind == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "malformed":
            _send(sock, 200, b'{"candidates": [ {"content": not json at all')
        elif kind == "badimage":
            _send(sock, 200, orjson.dumps(_answer(image=os.urandom(300))))
        elif kind == "cut":
            first = _answer(finish=None)
            sock.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            event = b"data: " + orjson.dumps(first) + b"\r\n\r\n"
            sock.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            # no terminating chunk: the connection closes mid-stream
        else:
            _send(sock, 400, _error(400, "INVALID_ARGUMENT", f"unknown fault step {step!r}"))


def _read_request(sock: socket.socket) -> tuple[tuple[str, dict[str, str]] | None, bytes]:
    message = read_message(sock)
    if message is None:
        return None, b""
    start, headers, body = message
    return (start, headers), body


def _send(sock: socket.socket, status: int, body: bytes) -> None:
    sock.sendall(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json; charset=UTF-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


def _send_sse(sock: socket.socket, docs: list[dict[str, Any]]) -> None:
    body = b"".join(b"data: " + orjson.dumps(d) + b"\r\n\r\n" for d in docs)
    sock.sendall(
        f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


class FaultUpstream(socketserver.ThreadingTCPServer):
    """The fault upstream on 127.0.0.1 and a free port; ``start``/``stop`` in a thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests(self, script_id: str) -> int:
        with self.lock:
            return self.counts[script_id]

    def start(self) -> FaultUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
