"""An upstream exchange leaves no reference cycle behind: its request and answer (megabytes each
on an image turn) are freed by reference counting as soon as the turn lets go of them.

httpx binds a response's stream to the response (``Response.stream`` refers back to it), so a
response and everything it holds (the request with its body, the answer) otherwise waited for a
full collection of the cycle collector; under load that was tens of MiB of a gateway's resident
memory (docs/performance.md, "Gateway, end to end"). Each test runs with the collector off and
asks whether the request httpx sent is still alive once the client has returned.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import httpx
import pytest

from governance.upstream.client import UpstreamClient

BODY = b'{"contents": []}' + b" " * 1_000_000
ANSWER = b'{"candidates": []}' + b" " * 1_000_000
EVENTS = b'data: {"candidates": [{"finishReason": "STOP"}]}\n\n'


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _client(sent: list[weakref.ref[httpx.Request]], *, stream: bool) -> UpstreamClient:
    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(weakref.ref(request))
        if stream:
            return httpx.Response(
                200, content=EVENTS, headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, content=ANSWER, headers={"content-type": "application/json"})

    return UpstreamClient(
        "http://upstream.test",
        "k",
        timeout_s=5,
        transport=httpx.MockTransport(answer),
        label="test",
        is_emulator=True,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
def test_an_exchange_is_freed_without_the_cycle_collector(no_collector: None, stream: bool) -> None:
    sent: list[weakref.ref[httpx.Request]] = []

    async def go() -> None:
        client = _client(sent, stream=stream)
        if stream:
            path = "/v1beta/models/m:streamGenerateContent"
            result = await client.post_stream(path, BODY, {}, {})
            assert result.status == 200 and result.stream_complete and len(result.events) == 1
        else:
            result = await client.post("/v1beta/models/m:generateContent", BODY, {}, {})
            assert result.status == 200 and result.body == ANSWER
        await client.aclose()

    asyncio.run(go())
    assert len(sent) == 1
    assert sent[0]() is None, "the upstream request (and its body) waits for a collection"


def test_a_resource_read_is_freed_without_the_cycle_collector(no_collector: None) -> None:
    sent: list[weakref.ref[httpx.Request]] = []

    async def go() -> None:
        client = _client(sent, stream=False)
        result = await client.get_resource("/v1beta/models", {}, {})
        assert result.status == 200
        assert await client.get("/v1beta/models") == 200
        await client.aclose()

    asyncio.run(go())
    assert len(sent) == 2
    assert all(ref() is None for ref in sent)
