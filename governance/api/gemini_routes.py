"""Gemini-compatible routes: ``/{v1,v1beta}/models/{model}:generateContent`` and the SSE stream.

An app using the official google-genai SDK changes only its base URL and API key to come here.
Before a turn begins the route checks what it can without the pipeline: the method is served,
the model name is one, the ``x-custody-*`` headers are well-formed, the body is within
``CUSTODY_MAX_REQUEST_BYTES``. Each refusal of an authenticated caller is recorded
(``request.refused``, see ``governance.pipeline.refusal``) before it is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from governance.api.custody_headers import SESSION_HEADER, check_custody_headers, check_model
from governance.api.deps import get_services, require_role
from governance.api.errors import GeminiError, not_served
from governance.api.request_limits import RequestBodyTimeout, body_timeout_error
from governance.auth.principal import Principal
from governance.pipeline.errors import TurnError
from governance.pipeline.turn import TurnPipeline
from governance.pipeline.turn_types import TurnOutcome, TurnRequest
from storage.ledger.events import LedgerEvent

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
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise _gone_before_body(size) from None
    except RequestBodyTimeout as exc:
        raise body_timeout_error(exc) from None
    return b"".join(chunks)


def _gone_before_body(size: int) -> GeminiError:
    """The caller closed the connection before its request body was read: nothing was asked."""
    err = GeminiError(
        499,
        f"The client closed the connection before its request body was read ({size:,} bytes"
        " read); no turn was started.",
        reason="CLIENT_CLOSED_REQUEST",
    )
    err.metadata["request_bytes"] = str(size)
    return err


def _too_large(size: int, limit: int) -> GeminiError:
    err = GeminiError(
        413,
        f"Request payload size exceeds the limit: {size:,} bytes sent, Custody accepts at most"
        f" {limit:,} (CUSTODY_MAX_REQUEST_BYTES).",
        status="INVALID_ARGUMENT",
        reason="PAYLOAD_TOO_LARGE",
    )
    err.metadata["request_bytes"] = str(size)
    return err


async def refuse(
    request: Request,
    principal: Principal,
    err: TurnError,
    *,
    body: bytes | None = None,
    facts: dict[str, Any] | None = None,
    preceding: Sequence[LedgerEvent] = (),
) -> TurnError:
    """Record ``err`` as the refusal of this request (before it is sent) and return it."""
    session = request.headers.get(SESSION_HEADER)
    if session is not None and check_custody_headers({SESSION_HEADER: session}) is not None:
        session = None  # a malformed session id is never stamped on a leaf
    return await get_services(request).pipeline.record_refusal(
        principal,
        err,
        http_method=request.method,
        path=request.url.path,
        session=session,
        body=body,
        facts=facts,
        preceding=preceding,
    )


async def checked_body(
    request: Request, principal: Principal, api_version: str, model: str
) -> bytes:
    """The body of a model-route POST once the model name, the headers and the size passed;
    otherwise the recorded refusal is raised."""
    facts: dict[str, Any] = {"api_version": api_version}
    problem = check_model(model)
    if problem is None:
        facts["model"] = model.removeprefix("models/")
        problem = check_custody_headers(request.headers)
    if problem is not None:
        raise await refuse(request, principal, problem, facts=facts)
    try:
        return await read_body(request, get_services(request).settings.max_request_bytes)
    except GeminiError as err:
        facts["request_bytes"] = int(err.metadata.get("request_bytes", 0))
        raise await refuse(request, principal, err, facts=facts) from None


@router.post("/{api_version}/models/{model_action}")
async def generate(
    api_version: str,
    model_action: str,
    request: Request,
    principal: Principal = Depends(require_role("editor")),  # noqa: B008
) -> Response:
    """Run one turn through the pipeline and answer as Gemini would (HTTP 200 exactly)."""
    model, _, method = model_action.partition(":")
    if api_version not in API_VERSIONS or method not in METHODS or not model:
        raise await refuse(request, principal, not_served(request.url.path, 404, "POST"))
    services = get_services(request)
    body = await checked_body(request, principal, api_version, model)
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
        # Without alt=sse Gemini streams one JSON array (orjson's own form of the list).
        array = b"[" + b",".join(outcome.serialised) + b"]"
        return Response(array, media_type="application/json", headers=headers)
    return Response(outcome.serialised[0], media_type="application/json", headers=headers)


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
        for doc in self.outcome.serialised:
            yield b"".join((b"data: ", doc, b"\r\n\r\n"))  # one copy of megabytes, not two

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
