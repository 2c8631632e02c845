"""The emulator's HTTP routes (FastAPI): Gemini's generate, stream and model routes, and a log.

Routes (``V`` is ``v1`` or ``v1beta``; google-genai 3.x calls ``v1``, 1.x/2.x ``v1beta``):

- ``POST /V/models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse``: SSE
  ``data: {json}\\r\\n\\r\\n`` events; without it a JSON array, as Gemini does)
- ``POST /V/models/{model}:countTokens`` (``{"totalTokens": N, "promptTokensDetails": [...]}``)
- ``GET /V/models`` (``pageSize``, ``pageToken``) and ``GET /V/models/{model}``
- ``GET /emulator/requests`` (the request log, oldest first) and ``DELETE /emulator/requests``

Every response carries ``x-custody-emulator: 1``; every ``modelVersion`` names the emulator.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pybase64
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from governance.upstream.emulator import engine, wire
from governance.upstream.emulator.config import EmulatorConfig
from governance.upstream.emulator.faults import Fault, GeminiError, fault_error, find_fault

log = logging.getLogger("custody.emulator")
API_VERSIONS = ("v1", "v1beta")
MODELS = {
    "gemini-2.5-flash-image": "Nano Banana: fast image generation and editing",
    "gemini-3-pro-image-preview": "Nano Banana Pro: image generation and editing with thinking",
}
HEADERS = {"x-custody-emulator": "1"}
JSON = "application/json; charset=UTF-8"


class RequestLog(deque[dict[str, Any]]):
    """The last N requests received (a ring buffer of dicts), oldest first."""

    def record(self, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"time": time.time(), "status": None, **fields}
        self.append(entry)
        return entry


class TruncatedResponse(Response):
    """Sends the status, headers and only ``partial`` of the body, then drops the connection."""

    def __init__(self, partial: bytes, *, media_type: str, content_length: int | None) -> None:
        super().__init__(b"", media_type=media_type, headers=HEADERS)
        self.partial = partial
        if content_length is None:
            del self.headers["content-length"]
        else:
            self.headers["content-length"] = str(content_length)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        log.warning("emulator fault=cut: dropping the connection mid-response (expected error)")
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.partial, "more_body": True})
        # Returning without the final body message makes the server close the connection.


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=JSON, headers=HEADERS)


def _model_resource(model: str) -> dict[str, Any]:
    return {
        "name": f"models/{model}",
        "version": "custody-emulator",
        "displayName": f"{model} (CUSTODY EMULATOR, not Gemini)",
        "description": MODELS.get(model, "") + " — emulated by Custody; no Google model is called.",
        "inputTokenLimit": 65536,
        "outputTokenLimit": 32768,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1.0,
        "maxTemperature": 2.0,
        "topP": 0.95,
        "topK": 64,
        "thinking": engine.is_thinking_model(model),
    }


def _not_found(model: str, api_version: str) -> GeminiError:
    return GeminiError(
        404,
        f"models/{model} is not found for API version {api_version}, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
    )


def create_emulator_app(config: EmulatorConfig | None = None) -> FastAPI:
    """The emulator as an ASGI app; ``app.state.request_log`` holds the request log."""
    cfg = config or EmulatorConfig()
    app = FastAPI(title="Custody Gemini emulator (NOT Gemini)", docs_url=None, redoc_url=None)
    request_log = RequestLog(maxlen=cfg.request_log_size)
    app.state.request_log = request_log
    app.state.emulator_config = cfg

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not given:
            raise GeminiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise GeminiError(
                403,
                "API key not valid. Please pass a valid API key.",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                  "domain": "googleapis.com"}],
            )  # fmt: skip

    @app.exception_handler(GeminiError)
    async def gemini_error(_: Request, exc: GeminiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return GeminiError(exc.status_code, str(exc.detail)).response()

    @app.get("/emulator/requests")
    async def list_requests() -> Response:
        return _json({"requests": list(request_log)})

    @app.delete("/emulator/requests")
    async def clear_requests() -> Response:
        cleared = len(request_log)
        request_log.clear()
        return _json({"cleared": cleared})

    @app.get("/{api_version}/models")
    async def list_models(api_version: str, request: Request) -> Response:
        if api_version not in API_VERSIONS:
            raise GeminiError(404, f"Unknown API version {api_version}")
        check_key(request)
        q = request.query_params
        return _json(
            wire.models_page(list(MODELS), _model_resource, q.get("pageSize"), q.get("pageToken"))
        )

    @app.get("/{api_version}/models/{model}")
    async def get_model(api_version: str, model: str, request: Request) -> Response:
        check_key(request)
        if api_version not in API_VERSIONS or model not in MODELS:
            raise _not_found(model, api_version)
        return _json(_model_resource(model))

    @app.post("/{api_version}/models/{model_action}")
    async def generate(api_version: str, model_action: str, request: Request) -> Response:
        model, _, action = model_action.partition(":")
        stream = action == "streamGenerateContent"
        entry = request_log.record(
            method="POST", path=request.url.path, model=model, action=action, stream=stream,
            text=None, images=0, fault=None, summary=None,
        )  # fmt: skip
        try:
            response = await _generate(api_version, model, action, request, entry)
        except GeminiError as exc:
            entry["status"] = exc.code
            entry["summary"] = exc.message
            return exc.response()
        except Exception:  # an emulator bug: still answer in Gemini's envelope, and say so
            log.exception("emulator failed on %s", request.url.path)
            entry["status"] = 500
            return GeminiError(500, "Internal error in the custody emulator (a bug).").response()
        entry["status"] = response.status_code
        return response

    async def _generate(
        api_version: str, model: str, action: str, request: Request, entry: dict[str, Any]
    ) -> Response:
        if api_version in API_VERSIONS and action == "countTokens":
            check_key(request)
            if not model.startswith("gemini-"):
                raise _not_found(model, api_version)
            counted = wire.count_tokens(await request.body())
            entry["summary"] = f"{counted['totalTokens']} tokens"
            return _json(counted)
        if api_version not in API_VERSIONS or action not in (
            "generateContent",
            "streamGenerateContent",
        ):
            raise GeminiError(404, f"Method not found: {request.url.path}")
        check_key(request)
        if not model.startswith("gemini-"):
            raise _not_found(model, api_version)
        parsed = wire.parse_generate_request(model, await request.body())
        fault, prompt = find_fault(request.headers.get("x-emulator-fault"), parsed.prompt)
        entry.update(text=prompt, images=len(parsed.images), fault=fault.label if fault else None)
        if fault is not None and (error := fault_error(fault, model)) is not None:
            try:
                raise error
            finally:  # the traceback holds this frame: it must not name the error (a cycle)
                del error
        delay_ms = cfg.latency_ms + (fault.slow_ms if fault else 0)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        engine.check_history_signatures(cfg, parsed)
        answer = await run_in_threadpool(engine.answer, cfg, parsed, prompt)
        entry["summary"] = answer.summary
        return _render(answer, stream=entry["stream"], request=request, fault=fault)

    return app


def _unreadable_images(chunk: dict[str, Any]) -> dict[str, Any]:
    """The ``badimage`` fault: every image part's bytes replaced by bytes that are no image."""
    junk = pybase64.b64encode(hashlib.sha256(b"badimage").digest() * 12).decode()
    for candidate in chunk.get("candidates", []):
        for part in candidate.get("content", {}).get("parts", []):
            if "inlineData" in part:
                part["inlineData"] = {"mimeType": "image/png", "data": junk}
    return chunk


def _render(
    answer: engine.Answer, *, stream: bool, request: Request, fault: Fault | None
) -> Response:
    cut = fault is not None and fault.kind == "cut"
    if fault is not None and fault.kind == "malformed":
        broken = b'{"candidates": [{"content": {"parts": [ not json (custody emulator: injected)'
        if stream and request.query_params.get("alt") == "sse":
            return Response(b"data: " + broken + b"\r\n\r\n", media_type="text/event-stream",
                            headers=HEADERS)  # fmt: skip
        return Response(broken, media_type=JSON, headers=HEADERS)
    if fault is not None and fault.kind == "badimage":
        answer.chunks = [_unreadable_images(c) for c in answer.chunks]
    if not stream:
        body = orjson.dumps(wire.merge_chunks(answer.chunks))
        if cut:
            return TruncatedResponse(
                body[: len(body) // 2], media_type=JSON, content_length=len(body)
            )
        return Response(body, media_type=JSON, headers=HEADERS)
    if request.query_params.get("alt") != "sse":
        body = b"[" + b",\r\n".join(orjson.dumps(c) for c in answer.chunks) + b"]"
        if cut:
            return TruncatedResponse(body[: len(body) // 2], media_type=JSON, content_length=None)
        return Response(body, media_type=JSON, headers=HEADERS)
    events = [wire.sse_event(c) for c in answer.chunks]
    if cut:
        return TruncatedResponse(events[0], media_type="text/event-stream", content_length=None)

    async def sse() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return StreamingResponse(sse(), media_type="text/event-stream", headers=HEADERS)
