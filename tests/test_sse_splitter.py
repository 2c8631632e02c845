"""The upstream SSE splitter is linear in the bytes it reads and splits exactly as SSE says.

A 3 MB streamed image read in 4 KiB chunks: the splitter counts the bytes it searches, and that
count stays a small multiple of the stream's size (re-scanning from the start on every chunk, as
the splitter once did, searched ~375 times the stream).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator

import orjson

from governance.upstream.client import SseSplitter, _sse_payloads


def _stream() -> tuple[bytes, list[bytes]]:
    image = base64.b64encode(os.urandom(2_250_000)).decode()  # 3 MB of base64
    docs = [
        {"candidates": [{"content": {"parts": [{"text": "Here it is."}]}}]},
        {"candidates": [{"content": {"parts": [{"inlineData": {"data": image}}]}}]},
        {"candidates": [{"finishReason": "STOP"}]},
    ]
    payloads = [orjson.dumps(d) for d in docs]
    separators = [b"\r\n\r\n", b"\n\n", b"\r\r"]
    raw = b"".join(b"data: " + p + sep for p, sep in zip(payloads, separators, strict=True))
    return raw, payloads


def _chunks(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def test_a_3_mb_event_in_4_kib_chunks_is_scanned_a_bounded_number_of_times() -> None:
    raw, payloads = _stream()
    assert len(raw) > 3_000_000
    splitter = SseSplitter()
    events = [event for chunk in _chunks(raw, 4096) for event in splitter.feed(chunk)]
    assert events == [b"data: " + p for p in payloads]
    assert splitter.rest() == b""
    assert splitter.scanned <= 3 * len(raw) + 16 * len(_chunks(raw, 4096))


async def _payloads(chunks: list[bytes]) -> list[bytes]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [p async for p in _sse_payloads(source())]


def test_payloads_are_the_same_whatever_the_chunk_size() -> None:
    raw, payloads = _stream()
    for size in (3, 4096, 65_536, len(raw)):
        assert asyncio.run(_payloads(_chunks(raw, size))) == payloads
    first = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"  # byte by byte: a separator split
    assert asyncio.run(_payloads(_chunks(first, 1))) == [payloads[0]]


def test_an_unterminated_last_event_is_still_delivered() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b'data: {}\n\ndata: {"a":1}') == [b"data: {}"]
    assert splitter.rest() == b'data: {"a":1}'
