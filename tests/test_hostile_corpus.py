"""The hostile-input corpus (tests/hostile/corpus.json) against one real server.

Every entry gets the 4xx it names in Gemini's envelope; a refusal of a keyed model-route request
is in the ledger under the id its response names; after the whole corpus the server is healthy,
still edits, and its RSS before and after is printed (reported, not asserted against a time).
Cases that tests/test_gateway_bad_input.py and tests/test_redteam_requests.py already hold (a
100,000² PNG header, a PDF as PNG, 10 MB prompts, 5,000 text parts, 10,000 levels of nesting in a
part) are not repeated here: these are their neighbours.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from tests.conftest import FIXTURES, RunningCustody, start_custody
from tests.http_wire import read_message
from tests.test_gateway_bad_input import _png_header_only

CORPUS = json.loads((Path(__file__).parent / "hostile" / "corpus.json").read_text())
TEAL = {"text": "make it teal"}


def _user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": list(parts)}]}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCustody]:
    running = start_custody(
        tmp_path_factory.mktemp("hostile") / "custody",
        max_request_bytes=2 * 1024 * 1024,
        header_timeout_s=2.0,
        body_idle_timeout_s=1.0,
        body_timeout_s=5.0,
    )
    running.rss_before_mb = _rss_mb()  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()


# --- bodies the corpus names by maker -----------------------------------------------------------


def _image(spec: dict[str, Any]) -> bytes:
    kind = spec["image"]
    if kind == "png_header":
        return _png_header_only(spec["width"], spec["height"])
    if kind == "gif_header":
        return (
            b"GIF89a"
            + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
            + b"\x2c"
            + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
            + b"\x02\x02\x4c\x01\x00\x3b"
        )
    if kind == "jpeg_header":
        sof = (
            b"\x08" + struct.pack(">HH", 65500, 65500) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
        )
        return b"\xff\xd8\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"
    if kind == "webp_header":
        vp8x = b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
        chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
        return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
    if kind in ("truncated", "real"):
        data = (FIXTURES / "photos" / spec["source"]).read_bytes()
        if kind == "real":
            return data
        keep = spec["keep"]
        return data[: len(data) // 2] if keep < 0 else data[:keep]
    if kind == "jpeg_cut":
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), "teal").save(buf, "JPEG")
        return buf.getvalue()[:300]
    return {
        "png_signature": b"\x89PNG\r\n\x1a\n",
        "png_html": b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>",
        "html": b"<!doctype html><html><body onload=alert(1)>not a picture</body></html>",
        "pdf": b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "zip": b"PK\x03\x04\x14\x00\x00\x00\x00\x00" + b"\x00" * 20,
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "elf": b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56,
        "empty": b"",
    }[kind]


def _gzip_bomb() -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        zeros = b"\x00" * (1024 * 1024)
        for _ in range(100):
            gz.write(zeros)
    return out.getvalue()


def _nest(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def make_body(spec: dict[str, Any] | None) -> bytes | Iterator[bytes] | None:
    """The bytes of a corpus body (a generator for a chunked upload)."""
    if spec is None:
        return None
    if "json" in spec:
        return orjson.dumps(spec["json"])
    if "text" in spec:
        return spec["text"].encode()
    if "b64" in spec:
        return base64.b64decode(spec["b64"])
    make = spec["make"]
    if make == "image_request":
        data = base64.b64encode(_image(spec)).decode()
        return orjson.dumps(_user({"inlineData": {"mimeType": spec["mime"], "data": data}}, TEAL))
    if make == "gzip_bomb":
        return _gzip_bomb()
    if make == "chunked_big":
        return (b"[" * 1024 for _ in range(spec["mb"] * 1024))
    if make == "utf16_body":
        return json.dumps(_user(TEAL)).encode("utf-16")
    if make == "deep_arrays":
        return b'{"contents":' + b"[" * spec["depth"] + b"]" * spec["depth"] + b"}"
    if make == "deep_config":
        head = orjson.dumps(_user(TEAL))[:-1]
        return head + b',"generationConfig":' + _nest(spec["depth"]) + b"}"
    if make == "number_array":
        return orjson.dumps({"contents": list(range(spec["count"]))})
    if make == "many_contents":
        entry = {"role": "user", "parts": [{"text": "t"}]}
        return orjson.dumps({"contents": [entry] * spec["count"]})
    if make == "many_image_parts":
        part = {"inlineData": {"mimeType": "image/png", "data": ""}}
        return orjson.dumps(_user(*[part] * spec["count"]))
    if make == "huge_prompt":
        return orjson.dumps(_user({"text": "teal " * (spec["chars"] // 5)}))
    if make == "deep_objects":
        return _nest(spec["depth"])
    raise AssertionError(f"unknown maker {make}")


# --- sending ----------------------------------------------------------------------------------


def _key(custody: RunningCustody, entry: dict[str, Any]) -> str | None:
    key = entry["key"]
    return None if key is None else custody.keys.get(key, key)


def send_http(custody: RunningCustody, entry: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", **entry["headers"]}
    key = _key(custody, entry)
    if key is not None:
        headers["authorization" if entry["path"].startswith("/api/") else "x-goog-api-key"] = (
            f"Bearer {key}" if entry["path"].startswith("/api/") else key
        )
    resp = httpx.request(
        entry["method"],
        custody.base_url + entry["path"],
        content=make_body(entry["body"]),
        headers=headers,
        timeout=120,
    )
    return resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content


def _wire_bytes(custody: RunningCustody, entry: dict[str, Any]) -> bytes:
    spec = entry["body"]
    key = _key(custody, entry)
    auth = f"x-goog-api-key: {key}\r\n" if key else ""
    if spec["make"] == "wire_bytes":
        return base64.b64decode(spec["b64"])
    if spec["make"] == "wire_post":
        head = (
            f"POST {entry['path']} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n"
            f"content-length: {spec['declared']}\r\n\r\n"
        )
        return head.encode() + spec["send"].encode()
    if spec["make"] == "wire_raw":
        head = f"POST {entry['path']} HTTP/1.1\r\nhost: x\r\n{auth}{spec['head_extra']}\r\n"
        return head.encode("latin-1") + spec["send"].encode()
    if spec["make"] == "wire_path":
        body = orjson.dumps(_user(TEAL))
        head = (
            f"POST {spec['target']} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body
    raise AssertionError(spec["make"])


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, lower-cased headers, body by its Content-Length)."""
    message = read_message(sock)
    if message is None:
        raise AssertionError("connection closed without a response")
    start, headers, body = message
    return int(start.split()[1]), headers, body


def send_wire(custody: RunningCustody, entry: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    host, port = custody.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(_wire_bytes(custody, entry))
        return read_response(sock)


def send_idle(custody: RunningCustody, entry: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    host, port = custody.base_url.removeprefix("http://").rsplit(":", 1)
    idle = [socket.create_connection((host, int(port))) for _ in range(entry["connections"])]
    try:
        time.sleep(0.5)
        resp = httpx.get(custody.base_url + entry["path"], timeout=30)
        return resp.status_code, dict(resp.headers), resp.content
    finally:
        for sock in idle:
            sock.close()


SENDERS = {"http": send_http, "wire": send_wire, "idle": send_idle}


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_hostile_request_gets_a_clear_answer(
    hostile: RunningCustody, entry: dict[str, Any]
) -> None:
    code, headers, body = SENDERS[entry["kind"]](hostile, entry)
    expected = entry["expect"] if isinstance(entry["expect"], list) else [entry["expect"]]
    assert code in expected, (entry["id"], code, body[:400])
    if code >= 400:
        assert 400 <= code < 500, (entry["id"], code)
        error = orjson.loads(body)["error"]
        assert error["code"] == code and isinstance(error["status"], str), error
        assert isinstance(error["message"], str) and len(error["message"]) > 20, error
    if entry["recorded"]:
        turn = headers.get("x-custody-turn")
        assert turn, (entry["id"], "a keyed refusal names its record", headers)
        events = hostile.ledger_events(turn)
        assert events and events[-1]["type"] in ("request.refused", "turn.failed", "turn.denied")


def test_the_server_is_healthy_and_bounded_after_the_corpus(hostile: RunningCustody) -> None:
    assert httpx.get(hostile.base_url + "/healthz").json() == {"status": "ok"}
    resp = httpx.post(
        hostile.base_url + "/v1beta/models/gemini-2.5-flash-image:generateContent",
        json=_user({"text": "a red bicycle"}),
        headers={"x-goog-api-key": hostile.keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 200
    before, after = hostile.rss_before_mb, _rss_mb()  # type: ignore[attr-defined]
    print(
        f"\nhostile corpus ({len(CORPUS)} requests): test-process RSS {before:.0f} → {after:.0f} MB"
    )
    assert after - before < 1024, "memory must stay bounded (1 GB bound on a 100 MB bomb)"
