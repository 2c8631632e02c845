"""Gemini-compatible routes: ``/{v1,v1beta}/models/{model}:generateContent`` and the SSE stream.

An app using the official google-genai SDK changes only its base URL and API key to come here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from governance.api.deps import authenticate, get_services
from governance.api.errors import GeminiError
from governance.auth.principal import Principal
from governance.pipeline.turn import TurnOutcome, TurnPipeline, TurnRequest, dumps

router = APIRouter()

API_VERSIONS = ("v1", "v1beta")
METHODS = ("generateContent", "streamGenerateContent")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a Gemini-shaped 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> GeminiError:
    return GeminiError(
        413,
        f"Request payload size exceeds the limit: {size:,} bytes sent, Custody accepts at most"
        f" {limit:,} (CUSTODY_MAX_REQUEST_BYTES).",
        status="INVALID_ARGUMENT",
        reason="PAYLOAD_TOO_LARGE",
    )


@router.post("/{api_version}/models/{model_action}")
async def generate(
    api_version: str,
    model_action: str,
    request: Request,
    principal: Principal = Depends(authenticate),  # noqa: B008
) -> Response:
    """Run one turn through the pipeline and answer as Gemini would (HTTP 200 exactly)."""
    model, _, method = model_action.partition(":")
    if api_version not in API_VERSIONS or method not in METHODS or not model:
        raise GeminiError(
            404,
            f"Custody serves models/{{model}}:generateContent and :streamGenerateContent under"
            f" /v1 and /v1beta; {request.url.path} is not one of them.",
            status="NOT_FOUND",
        )
    services = get_services(request)
    body = await read_body(request, services.settings.max_request_bytes)
    turn = TurnRequest(
        api_version=api_version,
        model=model.removeprefix("models/"),
        method=method,
        body=body,
        headers={k.lower(): v for k, v in request.headers.items()},
        params=dict(request.query_params),
    )
    outcome = await services.pipeline.run(turn, principal)
    headers = {"x-custody-turn": outcome.turn_id}
    if await request.is_disconnected():  # released and recorded, but nobody is there to get it
        await services.pipeline.record_undelivered(outcome, stage="before_send", sent=0)
        return Response(status_code=499)
    if outcome.stream:
        if request.query_params.get("alt") == "sse":
            return _DeliveredStream(outcome, services.pipeline, headers)
        # Without alt=sse Gemini streams one JSON array.
        return Response(dumps(outcome.documents), media_type="application/json", headers=headers)
    return Response(dumps(outcome.documents[0]), media_type="application/json", headers=headers)


class _DeliveredStream(StreamingResponse):
    """The SSE events of a released turn; if the client goes away mid-stream, that is recorded
    (``turn.undelivered``, after ``turn.released``) instead of passing as a delivery.

    An event counts as sent when the server took it while the client was still connected (the
    server drops writes to a closed connection silently, so each send is followed by a check).
    """

    def __init__(self, outcome: TurnOutcome, pipeline: TurnPipeline, headers: dict[str, str]):
        self.outcome, self.pipeline, self.sent = outcome, pipeline, 0
        super().__init__(self._events(), media_type="text/event-stream", headers=headers)

    async def _events(self) -> AsyncIterator[bytes]:
        for doc in self.outcome.documents:
            yield b"data: " + dumps(doc) + b"\r\n\r\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = False

        async def tracked(message: Message) -> None:
            nonlocal gone
            if gone:
                return
            await send(message)
            if message["type"] == "http.response.body" and message.get("body"):
                if await _disconnected(receive):
                    gone = True
                else:
                    self.sent += 1

        try:
            await super().__call__(scope, receive, tracked)
        finally:
            if self.sent < len(self.outcome.documents):
                with anyio.CancelScope(shield=True):
                    await self.pipeline.record_undelivered(
                        self.outcome, stage="mid_stream", sent=self.sent
                    )


async def _disconnected(receive: Receive) -> bool:
    """Whether the client has gone (``http.disconnect`` waiting), without blocking."""
    message: Message = {}
    with anyio.CancelScope() as scope:
        scope.cancel()
        message = await receive()
    return message.get("type") == "http.disconnect"
