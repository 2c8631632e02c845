"""The forwarding client: the caller's bytes go upstream unchanged, the answer comes back raw.

Why raw HTTP (httpx) and not google-genai's typed client: the SDK's pydantic models are declared
``extra='forbid'``, so a field Custody does not know yet would be rejected or dropped, and its
client re-serialises the body. Custody must forward every field and every ``thoughtSignature``
byte for byte, so the body is passed through as the caller sent it; only the credential changes
(the caller's Custody key is never forwarded; the upstream key is added here and nowhere else).

Idle connections are dropped after ``KEEPALIVE_EXPIRY_S``, below the idle timeout of common
servers (uvicorn's, the emulator's old default, is 5 s): a server closes an idle connection at its
timeout, and a request sent on it at that moment is lost with nothing received (``ReadError``).
The client that lets go first never sends on a connection the server is closing.

httpx binds each response's stream to the response (``Response.stream`` is a stream that refers
back to it): a reference cycle holding the request body and the answer, megabytes each on an
image turn, until the cycle collector's next full collection. Every response is unbound once it
is closed (``unbind``), so both go the moment the turn lets go of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

FORWARDED_HEADERS = ("content-type", "accept", "x-goog-api-client", "user-agent")
EMULATOR_HEADERS = ("x-emulator-fault",)
KEEPALIVE_EXPIRY_S = 4.0


@dataclass
class UpstreamResult:
    """What the upstream answered: status, raw body (or SSE events) and timing."""

    status: int
    body: bytes
    headers: dict[str, str]
    elapsed_ms: float
    events: list[bytes] = field(default_factory=list)  # SSE ``data:`` payloads, in order
    stream_complete: bool = True  # False when a stream ended without its final chunk
    transport_error: str | None = None
    timed_out: bool = False  # the upstream did not answer (or finish a stream) in time


class UpstreamClient:
    """Posts raw Gemini requests to one upstream (Google, any compatible endpoint, the emulator)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
        label: str,
        is_emulator: bool,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.label = label
        self.is_emulator = is_emulator
        self._api_key = api_key
        limits = httpx.Limits(
            max_connections=256, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_EXPIRY_S
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=limits,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self, incoming: dict[str, str]) -> dict[str, str]:
        names = FORWARDED_HEADERS + (EMULATOR_HEADERS if self.is_emulator else ())
        headers = {n: incoming[n] for n in names if n in incoming}
        headers.setdefault("content-type", "application/json")
        if self._api_key:
            headers["x-goog-api-key"] = self._api_key
        return headers

    async def post(
        self,
        path: str,
        body: bytes,
        incoming: dict[str, str],
        params: dict[str, str],
        *,
        deadline_s: float | None = None,
    ) -> UpstreamResult:
        """POST ``body`` to ``path``; a transport failure becomes status 0 with its reason.

        ``deadline_s`` bounds the whole exchange (connect, send, the answer to its last byte),
        where the client's timeout bounds each read: past it the result is a timeout."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):
                resp = unbind(
                    await self._http.post(
                        path, content=body, headers=self._headers(incoming), params=params
                    )
                )
        except TimeoutError:
            return UpstreamResult(
                0,
                b"",
                {},
                (time.perf_counter() - start) * 1000,
                transport_error=_deadline(deadline_s),
                timed_out=True,
            )
        except httpx.HTTPError as exc:
            return UpstreamResult(
                0,
                b"",
                {},
                (time.perf_counter() - start) * 1000,
                transport_error=_describe(exc),
                timed_out=isinstance(exc, httpx.TimeoutException),
            )
        return UpstreamResult(
            resp.status_code,
            resp.content,
            dict(resp.headers),
            (time.perf_counter() - start) * 1000,
        )

    async def post_stream(
        self,
        path: str,
        body: bytes,
        incoming: dict[str, str],
        params: dict[str, str],
        *,
        deadline_s: float | None = None,
    ) -> UpstreamResult:
        """POST a streaming request and collect every SSE event (Custody signs before release).

        A stream cut by the upstream, or that times out, comes back with ``stream_complete``
        False (and ``timed_out``). Whether its last event carries a finish reason is judged by
        the pipeline's response walk, which parses every event anyway. ``deadline_s`` bounds the
        whole stream, as for ``post``.
        """
        start = time.perf_counter()
        events: list[bytes] = []
        try:
            async with asyncio.timeout(deadline_s):
                return await self._stream(path, body, incoming, params, events, start)
        except TimeoutError:
            return UpstreamResult(
                0,
                b"",
                {},
                (time.perf_counter() - start) * 1000,
                events=events,
                stream_complete=False,
                transport_error=_deadline(deadline_s),
                timed_out=True,
            )

    async def _stream(
        self,
        path: str,
        body: bytes,
        incoming: dict[str, str],
        params: dict[str, str],
        events: list[bytes],
        start: float,
    ) -> UpstreamResult:
        resp: httpx.Response | None = None
        try:
            async with self._http.stream(
                "POST", path, content=body, headers=self._headers(incoming), params=params
            ) as resp:
                event_stream = resp.headers.get("content-type", "").startswith("text/event-stream")
                if resp.status_code != 200 or not event_stream:  # an error, or one JSON body
                    content = await resp.aread()
                    return UpstreamResult(
                        resp.status_code,
                        content,
                        dict(resp.headers),
                        (time.perf_counter() - start) * 1000,
                    )
                complete, timed_out, error = True, False, None
                try:
                    async for payload in _sse_payloads(resp.aiter_bytes()):
                        events.append(payload)
                except httpx.HTTPError as exc:
                    complete, error = False, _describe(exc)
                    timed_out = isinstance(exc, httpx.TimeoutException)
                return UpstreamResult(
                    200,
                    b"",
                    dict(resp.headers),
                    (time.perf_counter() - start) * 1000,
                    events=events,
                    stream_complete=complete and bool(events),
                    transport_error=error,
                    timed_out=timed_out,
                )
        except httpx.HTTPError as exc:
            return UpstreamResult(
                0,
                b"",
                {},
                (time.perf_counter() - start) * 1000,
                events=events,
                stream_complete=False,
                transport_error=_describe(exc),
                timed_out=isinstance(exc, httpx.TimeoutException),
            )
        finally:
            if resp is not None:  # closed by the block above: only now may its stream go
                unbind(resp)

    async def get_resource(
        self, path: str, incoming: dict[str, str], params: dict[str, str]
    ) -> UpstreamResult:
        """GET a Gemini resource (``models``, ``models/{model}``) with Custody's upstream key;
        the caller's key and any ``key=`` parameter never leave. A transport failure is
        status 0 with its reason, as for ``post``."""
        start = time.perf_counter()
        params = {k: v for k, v in params.items() if k != "key"}
        try:
            resp = unbind(
                await self._http.get(path, headers=self._headers(incoming), params=params)
            )
        except httpx.HTTPError as exc:
            return UpstreamResult(
                0, b"", {}, (time.perf_counter() - start) * 1000, transport_error=_describe(exc)
            )
        return UpstreamResult(
            resp.status_code,
            resp.content,
            dict(resp.headers),
            (time.perf_counter() - start) * 1000,
        )

    async def get(self, path: str) -> int:
        """GET ``path`` upstream (readiness); returns the status, 0 when unreachable."""
        try:
            resp = unbind(await self._http.get(path, headers=self._headers({}), timeout=5.0))
        except httpx.HTTPError:
            return 0
        return resp.status_code


def unbind(resp: httpx.Response) -> httpx.Response:
    """``resp``, closed, without the cycle httpx makes through its stream (``Response.stream``
    refers back to the response): what it holds (the request with its body, the answer) is
    freed by reference counting when the last name for it goes, not at a full collection."""
    if resp.is_closed:
        resp.stream = httpx.ByteStream(b"")
    return resp


def _deadline(deadline_s: float | None) -> str:
    return f"no complete answer within the turn's upstream deadline ({deadline_s or 0:.1f} s left)"


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
_OVERLAP = max(len(sep) for sep in _SEPARATORS) - 1


class SseSplitter:
    """Splits an SSE byte stream into events in time linear in its length.

    Each byte is searched at most once per separator (plus a 3-byte overlap across chunk
    boundaries): a 3 MB event read in 4 KiB chunks costs about 3 x 3 MB of scanning, where
    re-scanning the buffer from its start on every chunk cost 3 x 3 MB x 375. ``scanned``
    counts the bytes searched, so a test can hold the bound without timing anything.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # the first byte of the event being assembled
        self._scan = 0  # bytes before this offset hold no separator that starts at/after _start
        self.scanned = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The raw text of every event that ``chunk`` completes, in order."""
        self._buffer += chunk
        out: list[bytes] = []
        while True:
            cut = self._next_separator()
            if cut is None:
                break
            with memoryview(self._buffer) as view:  # one copy of the event, not two
                out.append(bytes(view[self._start : cut[0]]))
            self._start = self._scan = cut[1]
        if self._start > len(self._buffer) // 2:  # amortised compaction keeps memory bounded
            del self._buffer[: self._start]
            self._scan -= self._start
            self._start = 0
        return out

    def rest(self) -> bytes:
        """What is left after the last separator (an event the stream did not terminate)."""
        return bytes(self._buffer[self._start :])

    def _next_separator(self) -> tuple[int, int] | None:
        end = len(self._buffer)
        lo = max(self._start, self._scan)
        best: tuple[int, int] | None = None
        for sep in _SEPARATORS:
            hi = best[0] + len(sep) - 1 if best else end  # only an earlier separator matters
            at = self._buffer.find(sep, lo, hi)
            self.scanned += max((at + len(sep) if at != -1 else hi) - lo, 0)
            if at != -1 and (best is None or at < best[0]):
                best = (at, at + len(sep))
        if best is None:
            self._scan = max(self._start, end - _OVERLAP)
        return best


async def _sse_payloads(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Split an SSE byte stream into the ``data:`` payload of each event."""
    splitter = SseSplitter()
    async for chunk in chunks:
        for raw in splitter.feed(chunk):
            payload = _data_of(raw)
            if payload is not None:
                yield payload
    rest = splitter.rest()
    if rest.strip():
        payload = _data_of(rest)
        if payload is not None:
            yield payload


def _data_of(raw: bytes) -> bytes | None:
    if raw.startswith(b"data:") and b"\n" not in raw and b"\r" not in raw:
        # One line (Gemini's every event): one copy of a payload of megabytes, not three.
        start = 5
        while raw[start : start + 1] == b" ":
            start += 1
        return raw[start:]
    lines = [ln[5:].lstrip(b" ") for ln in raw.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The upstream body as a JSON object, or None when it is not one."""
    import orjson

    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
