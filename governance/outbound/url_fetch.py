"""One guarded fetch of a URL input: scheme and host allow-list, checked addresses, every
redirect checked again, size and time limits.

Each hop: the scheme must be allowed (https only by default; ``file:``, ``data:``, ``ftp:``
never reach a socket), the host must match the host allow-list (empty: any host), the name is
resolved once and EVERY address it resolves to must pass ``address_refusal``; the connection then
goes to the first checked address itself (the URL's host replaced by that IP, the ``Host`` header
and the TLS server name kept as the name, so the certificate is still verified against the
name). Redirects are followed by hand, each one a new hop under the same checks, at most
``max_redirects``. The body is read in chunks and abandoned past ``max_bytes``; the whole fetch,
name lookups and redirects included, must finish within ``timeout_s``.

Why raw httpx and not ``follow_redirects=True``: httpx would resolve and connect to a redirect's
target itself, after Custody's check — the rebinding window this module exists to close.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch

import httpx

from governance.outbound.addresses import IPAddress, Network, address_refusal, parse_networks
from governance.settings import Settings

Resolver = Callable[[str, int], Awaitable[list[str]]]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UrlInputError(Exception):
    """A URL input Custody would not or could not fetch; ``reason`` is the ErrorInfo reason."""

    def __init__(self, message: str, reason: str = "URL_INPUT_REFUSED") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class OutboundRules:
    """What a URL input may reach (``CUSTODY_URL_INPUT_*``)."""

    schemes: frozenset[str] = frozenset({"https"})
    hosts: tuple[str, ...] = ()  # host patterns ("images.example.com", "*.cdn.example"); empty: any
    allowed_networks: tuple[Network, ...] = ()  # reachable although not public (tests, intranet)
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundRules:
        """The rules ``CUSTODY_URL_INPUT_*`` name; ValueError on a bad network."""
        return cls(
            schemes=frozenset(s.strip().lower() for s in settings.url_input_schemes if s.strip()),
            hosts=tuple(h.strip().lower() for h in settings.url_input_hosts if h.strip()),
            allowed_networks=parse_networks(settings.url_input_allow_networks),
            max_bytes=settings.url_input_max_bytes,
            timeout_s=settings.url_input_timeout_s,
            max_redirects=settings.url_input_max_redirects,
        )


@dataclass(frozen=True)
class FetchedUrl:
    """What one URL input fetched: the bytes and where they came from."""

    host: str  # of the URL as sent
    final_host: str  # after redirects
    address: str  # the IP address the bytes came from
    redirects: int
    status: int
    content_type: str | None  # the response's media type, parameters dropped
    data: bytes = field(repr=False)


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), from the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _where(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.host}"  # never the path or query: a signed URL's token


def _too_big(url: httpx.URL, limit: int) -> UrlInputError:
    return UrlInputError(
        f"the URL input at {_where(url)} is larger than {limit:,} bytes"
        " (CUSTODY_URL_INPUT_MAX_BYTES)",
        "URL_INPUT_TOO_LARGE",
    )


def _unreachable(url: httpx.URL, exc: httpx.HTTPError) -> UrlInputError:
    return UrlInputError(
        f"the URL input at {_where(url)} could not be fetched ({type(exc).__name__})",
        "URL_INPUT_UNAVAILABLE",
    )


class UrlFetcher:
    """Fetches URL inputs under ``OutboundRules``; one instance per process."""

    def __init__(self, rules: OutboundRules, resolver: Resolver = system_resolver) -> None:
        self.rules = rules
        self._resolve = resolver

    async def fetch(self, uri: str) -> FetchedUrl:
        """The bytes at ``uri``; raises ``UrlInputError`` saying why not."""
        try:
            async with asyncio.timeout(self.rules.timeout_s):
                return await self._fetch(uri)
        except TimeoutError:
            raise UrlInputError(
                f"fetching the URL input at {self._safe_where(uri)} took longer than"
                f" {self.rules.timeout_s:g} s (CUSTODY_URL_INPUT_TIMEOUT_S); send the content"
                " inline as inlineData",
                "URL_INPUT_TIMEOUT",
            ) from None

    def _safe_where(self, uri: str) -> str:
        try:
            return _where(httpx.URL(uri))
        except Exception:
            return "a URL Custody cannot parse"

    async def _fetch(self, uri: str) -> FetchedUrl:
        try:
            url = httpx.URL(uri)
        except Exception:
            raise UrlInputError("the URL input is not a URL Custody can parse") from None
        first_host = url.host
        timeout = httpx.Timeout(self.rules.timeout_s)
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            timeout=timeout, limits=limits, trust_env=False, follow_redirects=False
        ) as client:
            for hop in range(self.rules.max_redirects + 1):
                address = await self._checked_address(url)
                request = self._request_to(client, url, address)
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise _unreachable(url, exc) from None
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        try:
                            url = url.join(location)
                        except Exception:
                            raise UrlInputError(
                                f"the URL input at {_where(url)} redirected to a location"
                                " Custody cannot parse"
                            ) from None
                        continue
                    if response.status_code != 200:
                        raise UrlInputError(
                            f"the URL input at {_where(url)} answered HTTP"
                            f" {response.status_code}, not 200; Custody inlines only content it"
                            " could fetch",
                            "URL_INPUT_UNAVAILABLE",
                        )
                    try:
                        data = await self._read_bounded(response, url)
                    except httpx.HTTPError as exc:
                        raise _unreachable(url, exc) from None
                finally:
                    await response.aclose()
                media = response.headers.get("content-type")
                return FetchedUrl(
                    host=first_host,
                    final_host=url.host,
                    address=address,
                    redirects=hop,
                    status=response.status_code,
                    content_type=media.split(";", 1)[0].strip().lower() if media else None,
                    data=data,
                )
        raise UrlInputError(
            f"the URL input redirected more than {self.rules.max_redirects} times"
            " (CUSTODY_URL_INPUT_MAX_REDIRECTS)"
        )

    async def _checked_address(self, url: httpx.URL) -> str:
        """The address to connect to for ``url``, after every check; raises why not."""
        rules = self.rules
        if url.scheme not in rules.schemes:
            raise UrlInputError(
                f"the URL input's scheme {url.scheme[:16]!r} is not allowed (allowed:"
                f" {', '.join(sorted(rules.schemes))}; CUSTODY_URL_INPUT_SCHEMES)"
            )
        if url.userinfo:
            raise UrlInputError("the URL input carries credentials (user:password@); refused")
        host = url.host
        if not host:
            raise UrlInputError("the URL input names no host")
        if rules.hosts and not any(fnmatch(host, pattern.lower()) for pattern in rules.hosts):
            raise UrlInputError(
                f"the URL input's host {host[:255]!r} is not on the outbound allow-list"
                " (CUSTODY_URL_INPUT_HOSTS)"
            )
        port = url.port or _DEFAULT_PORTS[url.scheme]
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self._resolve(host, port)
            except OSError as exc:
                raise UrlInputError(
                    f"the URL input's host {host[:255]!r} does not resolve ({exc.strerror or exc})",
                    "URL_INPUT_UNAVAILABLE",
                ) from None
        if not addresses:
            raise UrlInputError(f"the URL input's host {host[:255]!r} resolves to no address")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            why = address_refusal(address, rules.allowed_networks)
            if why is not None:
                raise UrlInputError(
                    f"the URL input's host {host[:255]!r} resolves to {address}, {why}:"
                    " Custody fetches URL inputs from public addresses only"
                )
        return addresses[0].split("%", 1)[0]

    def _request_to(self, client: httpx.AsyncClient, url: httpx.URL, address: str) -> httpx.Request:
        """A GET of ``url`` sent to ``address``: the name stays in Host and the TLS server name."""
        host_header = url.netloc.decode("ascii")
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        return client.build_request(
            "GET",
            url.copy_with(host=address),
            headers={"Host": host_header, "Accept": "*/*", "User-Agent": "custody-url-input"},
            extensions=extensions,
        )

    async def _read_bounded(self, response: httpx.Response, url: httpx.URL) -> bytes:
        limit = self.rules.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_big(url, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                # Made here, never named in this frame (the traceback holds it: a local naming
                # the error would keep the chunks read so far in a reference cycle).
                raise _too_big(url, limit)
            chunks.append(chunk)
        return b"".join(chunks)
