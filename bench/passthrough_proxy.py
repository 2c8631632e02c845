"""The floor of any gateway here: one HTTP hop in Python that forwards and does nothing else.

``python -m bench.passthrough_proxy --port P --upstream URL`` serves every path by posting the
request body unchanged to the same path on ``URL`` and answering with the upstream's status,
content type and body. It parses nothing, checks nothing, signs nothing and records nothing. It
runs on the same parts as ``custody serve`` — uvicorn with its httptools protocol on its default
loop (uvloop where installed) and one pooled ``httpx.AsyncClient`` — so ``bench.gateway_bench
--floor`` can tell how much of Custody's added latency is the hop itself (two more transfers of
the image, on two cores) and how much is governance. A unary request is read whole before it
goes upstream, as Custody must to decide on it; a streamed answer (``alt=sse``) is relayed chunk
by chunk as it arrives, which Custody cannot do for the chunk carrying an image it has to sign
first.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Request headers the upstream needs: who is calling and what the body is.
FORWARDED = (b"content-type", b"x-goog-api-key", b"x-goog-api-client", b"user-agent")


class PassthroughProxy:
    """An ASGI app forwarding every HTTP request to ``upstream`` (lifespan opens the client)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._http: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
                self._http = httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._http is not None:
                    await self._http.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._http is not None, "the lifespan opens the client before any request"
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        query = scope.get("query_string", b"").decode()
        url = f"{self.upstream}{scope['path']}" + (f"?{query}" if query else "")
        request = self._http.build_request(
            scope["method"], url, content=b"".join(chunks), headers=headers
        )
        upstream = await self._http.send(request, stream=True)
        try:
            content_type = upstream.headers.get("content-type", "application/json")
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": [(b"content-type", content_type.encode())],
                }
            )
            if content_type.startswith("text/event-stream"):
                async for chunk in upstream.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                body = await upstream.aread()
                await send({"type": "http.response.body", "body": body})
        finally:
            await upstream.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8081")
    args = parser.parse_args()
    uvicorn.run(
        PassthroughProxy(args.upstream),
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop="auto",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
