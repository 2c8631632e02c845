"""Requests once their headers are in: a bounded number in flight, and a deadline for the body.

- **In flight.** At most ``max_inflight`` requests run at once; the next one is answered 503
  with ``Retry-After`` in Gemini's envelope before any of its body is read (shed, not queued
  without bound). ``/healthz`` and ``/readyz`` are never shed: a load balancer must be able to tell
  a busy gateway from a dead one.
- **Body deadline.** While a request's body is still arriving, each chunk must come within
  ``body_idle_timeout_s`` and the whole body within ``body_timeout_s`` of the first read;
  otherwise ``receive`` raises ``RequestBodyTimeout``. The routes that read bodies themselves
  (``gemini_routes.read_body``) turn it into a recorded 408; the app's handler answers it
  elsewhere. Once the body is complete ``receive`` is passed through untouched (waiting for a
  disconnect is not a body read).

The header deadline and the connection caps are one layer down, in ``governance.connection_guard``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from governance.api.errors import GeminiError

NEVER_SHED = frozenset({"/healthz", "/readyz"})


class RequestBodyTimeout(Exception):
    """The request body stopped arriving (or took too long in all)."""

    def __init__(self, received: int, limit_s: float, setting: str) -> None:
        super().__init__(f"request body too slow: {received} bytes, limit {limit_s:g} s")
        self.received = received
        self.limit_s = limit_s
        self.setting = setting


def body_timeout_error(exc: RequestBodyTimeout) -> GeminiError:
    """The caller-facing 408 for a body that was too slow."""
    err = GeminiError(
        408,
        f"The request body did not arrive in time ({exc.received:,} bytes read, limit"
        f" {exc.limit_s:g} s, {exc.setting}); the connection is closed and no turn was started."
        " Send the whole body at once.",
        status="DEADLINE_EXCEEDED",
        reason="REQUEST_BODY_TIMEOUT",
        headers={"connection": "close"},
    )
    err.metadata["request_bytes"] = str(exc.received)
    return err


def new_counts() -> dict[str, int]:
    """Requests refused by ``RequestLimits``, by reason."""
    return {"inflight": 0, "body_timeout": 0}


@dataclass(frozen=True)
class RequestLimitSettings:
    max_inflight: int = 512
    body_idle_timeout_s: float = 15.0
    body_timeout_s: float = 120.0
    retry_after_s: int = 1


class RequestLimits:
    """ASGI middleware enforcing ``RequestLimitSettings`` (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: RequestLimitSettings,
        counts: dict[str, int] | None = None,
        on_shed: Callable[[Scope, str], None] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.on_shed = on_shed  # told of each request shed (scope, reason) to record its tenant
        self.inflight = 0
        self.counts = counts if counts is not None else new_counts()  # read by /metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in NEVER_SHED:
            await self.app(scope, receive, send)
            return
        cap = self.limits.max_inflight
        if cap and self.inflight >= cap:
            self.counts["inflight"] += 1
            if self.on_shed is not None:
                self.on_shed(scope, "OVERLOADED")
            await self._overloaded(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, self._deadlined(receive), send)
        finally:
            self.inflight -= 1

    async def _overloaded(self, scope: Scope, receive: Receive, send: Send) -> None:
        seconds = self.limits.retry_after_s
        err = GeminiError(
            503,
            f"Custody is serving as many requests as it allows ({self.limits.max_inflight},"
            f" CUSTODY_MAX_INFLIGHT_REQUESTS); nothing of this one was read, and only its count is"
            f" recorded (requests.shed). Retry in"
            f" {seconds} s (Retry-After).",
            reason="OVERLOADED",
            headers={"Retry-After": str(seconds), "connection": "close"},
        )
        await err.response()(scope, receive, send)

    def _deadlined(self, receive: Receive) -> Receive:
        limits = self.limits
        state = {"done": False, "received": 0, "deadline": 0.0}

        async def receive_in_time() -> Message:
            if state["done"]:
                return await receive()
            now = time.monotonic()
            if not state["deadline"]:
                state["deadline"] = now + limits.body_timeout_s
            left = state["deadline"] - now
            idle = limits.body_idle_timeout_s
            wait, setting = (
                (idle, "CUSTODY_BODY_IDLE_TIMEOUT_S")
                if idle < left
                else (left, "CUSTODY_BODY_TIMEOUT_S")
            )
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                self.counts["body_timeout"] += 1
                limit = idle if setting.endswith("IDLE_TIMEOUT_S") else limits.body_timeout_s
                raise RequestBodyTimeout(int(state["received"]), limit, setting) from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state["done"] = True
            else:
                state["done"] = True
            return message

        return receive_in_time
