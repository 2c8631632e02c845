"""Connections before they are requests: a header deadline, a cap per client and in total.

uvicorn offers ``timeout_keep_alive`` (idle time *between* requests) and ``limit_concurrency``
(which counts connections, so a slow-loris of idle sockets makes it answer 503 to ``/healthz``
too). It has no deadline for a request's headers and no per-client cap: 20,000 half-open
connections held every one of their file descriptors until the process hit ``EMFILE``. This
module adds what is missing, in the HTTP protocol itself (before any ASGI app runs):

- **Header deadline.** A connection has ``header_timeout_s`` from its first byte of a request (or
  from being accepted) to complete that request's headers; then it gets a 408 and is closed.
- **Caps with eviction.** A connection that is *waiting* (no request running: headers not yet
  complete, or idle between keep-alive requests) costs one descriptor and nothing else. When a new
  connection would pass ``max_connections`` or ``max_per_client``, the oldest waiting connection
  (of that client, for the per-client cap) is closed to make room, so a new connection always
  gets a slot however many idle sockets an attacker holds (a place in the kernel's accept queue
  is another matter: ``governance.health_listener`` says why health checks get a port of their
  own). Only when every connection is running a
  request (bounded by the in-flight limit, ``governance.api.request_limits``) is the newcomer
  itself answered 503 with ``Retry-After`` and closed.

The table is shared by the protocol instances of one server (one event loop): no locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from governance.raw_http import raw_error_response

log = logging.getLogger("custody")


@dataclass(frozen=True)
class ConnectionLimits:
    """How long headers may take and how many connections are held (0: no cap)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 128 * 1024
    max_connections: int = 10_000
    max_per_client: int = 512
    retry_after_s: int = 1


@dataclass
class ConnectionTable:
    """Every open connection of one server, the waiting ones in age order, and what was cut."""

    limits: ConnectionLimits
    total: int = 0
    by_client: dict[str, int] = field(default_factory=dict)
    waiting: OrderedDict[Any, None] = field(default_factory=OrderedDict)
    waiting_by_client: dict[str, OrderedDict[Any, None]] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"header_timeout": 0, "evicted": 0, "refused_full": 0}
    )

    def admit(self, conn: Any, client: str) -> bool:
        """Count ``conn`` in; make room by closing the oldest waiting connection if a cap is
        reached. ``False``: nothing could be closed, so ``conn`` must be refused."""
        cap_client = self.limits.max_per_client
        if cap_client and self.by_client.get(client, 0) >= cap_client:
            own = self.waiting_by_client.get(client)
            if not own:
                return self._refused()
            self._evict(next(iter(own)))
        cap = self.limits.max_connections
        if cap and self.total >= cap:
            if not self.waiting:
                return self._refused()
            self._evict(next(iter(self.waiting)))
        self.total += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return True

    def _refused(self) -> bool:
        self.counts["refused_full"] += 1
        return False

    def _evict(self, conn: Any) -> None:
        """Close a waiting connection and stop counting it at once (its descriptor goes on the
        loop's next turn), so one admission never evicts two."""
        self.counts["evicted"] += 1
        conn.uncount()
        conn.evict()

    def mark_waiting(self, conn: Any, client: str) -> None:
        self.waiting.pop(conn, None)
        self.waiting[conn] = None
        own = self.waiting_by_client.setdefault(client, OrderedDict())
        own.pop(conn, None)
        own[conn] = None

    def mark_busy(self, conn: Any) -> None:
        self.waiting.pop(conn, None)
        own = self.waiting_by_client.get(conn.client_key)
        if own is not None:
            own.pop(conn, None)
            if not own:
                del self.waiting_by_client[conn.client_key]

    def release(self, conn: Any, client: str) -> None:
        self.mark_busy(conn)
        self.total -= 1
        left = self.by_client.get(client, 1) - 1
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


def guarded_protocol(table: ConnectionTable) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``table``'s header deadline and caps (module docstring);
    pass it as ``uvicorn.Config(http=...)``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        connection_table = table  # for operators' metrics and tests
        client_key = ""
        _counted = False
        _served = False  # a response went out: an idle keep-alive connection is closed silently
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _in_headers = True  # between a request's first byte (or the accept) and its headers' end

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.client_key = self.client[0] if self.client else ""
            if not table.admit(self, self.client_key):
                self.cut(
                    503,
                    "Service Unavailable",
                    "UNAVAILABLE",
                    "OVERLOADED",
                    "Custody is serving as many requests as it allows; nothing of this one was"
                    f" read. Retry in {table.limits.retry_after_s} s (Retry-After).",
                    retry=table.limits.retry_after_s,
                )
                return
            self._counted = True
            table.mark_waiting(self, self.client_key)
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            if self._header_timer is None and table.limits.header_timeout_s > 0:
                self._header_timer = self.loop.call_later(
                    table.limits.header_timeout_s, self._headers_too_slow
                )

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            table.counts["header_timeout"] += 1
            self.cut(
                408,
                "Request Timeout",
                "DEADLINE_EXCEEDED",
                "HEADER_TIMEOUT",
                f"The request's headers did not arrive within {table.limits.header_timeout_s:g} s"
                " (CUSTODY_HEADER_TIMEOUT_S); the connection is closed and nothing was read.",
            )

        def cut(
            self, code: int, phrase: str, status: str, reason: str, message: str, retry: int = 0
        ) -> None:
            """Answer with a complete error response (no request was parsed) and close."""
            self._disarm_header_timer()
            if self.transport is not None and not self.transport.is_closing():
                retry = retry or (table.limits.retry_after_s if code == 503 else 0)
                response = raw_error_response(code, phrase, status, reason, message, retry)
                self.transport.write(response)
                self.transport.close()

        def uncount(self) -> None:
            if self._counted:
                self._counted = False
                table.release(self, self.client_key)

        def evict(self) -> None:
            if self._served:  # between keep-alive requests: a response here would answer nothing
                self._disarm_header_timer()
                self.transport.close()
                return
            self.cut(
                503,
                "Service Unavailable",
                "UNAVAILABLE",
                "CONNECTION_EVICTED",
                "Custody holds as many idle connections as it allows, and this one was the oldest"
                " idle one, so it was closed. Reconnect and send the request at once.",
            )

        def data_received(self, data: bytes) -> None:
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._in_headers and self._header_bytes > table.limits.max_header_bytes:
                self.cut(
                    431,
                    "Request Header Fields Too Large",
                    "INVALID_ARGUMENT",
                    "HEADERS_TOO_LARGE",
                    f"The request's headers passed {table.limits.max_header_bytes:,} bytes"
                    " (CUSTODY_MAX_HEADER_BYTES); the connection is closed and nothing was read.",
                )

        def send_400_response(self, msg: str) -> None:
            """The parser's refusal (malformed request line or headers, smuggling) in Gemini's
            envelope instead of uvicorn's plain text."""
            self.cut(
                400,
                "Bad Request",
                "INVALID_ARGUMENT",
                "MALFORMED_HTTP",
                "The request is not well-formed HTTP/1.1 (request line, header or length"
                " framing); the connection is closed and nothing was read.",
            )

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            self._disarm_header_timer()
            if self._counted:
                table.mark_busy(self)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._served = True
            idle = self.cycle is None or self.cycle.response_complete  # no pipelined request
            if self._counted and idle and not self.transport.is_closing():
                table.mark_waiting(self, self.client_key)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            self.uncount()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol
