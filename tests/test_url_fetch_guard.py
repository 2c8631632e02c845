"""The outbound guard for URL inputs, against real HTTP servers on 127.0.0.1.

The default rules refuse loopback, private, link-local, CGNAT, multicast, IPv6 ULA, the metadata
addresses and non-https schemes — before any connection — and so does every redirect hop. A
test that fetches from a local server has to allow 127.0.0.1 explicitly, as here."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from governance.outbound import OutboundRules, UrlFetcher, UrlInputError, address_refusal
from governance.outbound.addresses import parse_networks
from tests.url_servers import LocalServer, redirect, serve, stall

LOCAL = OutboundRules(
    schemes=frozenset({"http", "https"}), allowed_networks=parse_networks(["127.0.0.1/32"])
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _fetch(uri: str, rules: OutboundRules = OutboundRules(), resolver=None):  # noqa: B008
    fetcher = UrlFetcher(rules) if resolver is None else UrlFetcher(rules, resolver)
    return asyncio.run(fetcher.fetch(uri))


def _refused(uri: str, rules: OutboundRules = OutboundRules(), resolver=None) -> UrlInputError:  # noqa: B008
    with pytest.raises(UrlInputError) as caught:
        _fetch(uri, rules, resolver)
    return caught.value


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("192.0.2.7", "address"),  # documentation range
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, kind: str) -> None:
    why = address_refusal(ipaddress.ip_address(address))
    assert why is not None and kind in why


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_an_allowed_network_never_includes_the_metadata_address() -> None:
    allowed = parse_networks(["169.254.0.0/16", "fd00::/8"])
    assert address_refusal(ipaddress.ip_address("169.254.1.1"), allowed) is None
    assert address_refusal(ipaddress.ip_address("169.254.169.254"), allowed) is not None
    assert address_refusal(ipaddress.ip_address("fd00:ec2::254"), allowed) is not None


@pytest.mark.parametrize(
    "uri",
    [
        "https://127.0.0.1/a.png",
        "https://[::1]/a.png",
        "https://localhost/a.png",
        "https://10.0.0.1/a.png",
        "https://192.168.0.10/a.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/latest/meta-data/",
        "https://100.64.0.1/a.png",
        "https://224.0.0.1/a.png",
        "https://[fc00::1]/a.png",
        "https://[::ffff:127.0.0.1]/a.png",
    ],
)
def test_the_default_refuses_loopback_private_and_metadata_before_connecting(uri: str) -> None:
    err = _refused(uri)
    assert err.reason == "URL_INPUT_REFUSED"
    assert "public addresses only" in err.message


@pytest.mark.parametrize(
    "uri",
    ["file:///etc/passwd", "http://example.com/a.png", "ftp://example.com/a.png", "data:,x"],
)
def test_the_default_allows_https_only(uri: str) -> None:
    err = _refused(uri)
    assert "scheme" in err.message and "CUSTODY_URL_INPUT_SCHEMES" in err.message


def test_the_default_refuses_a_local_server_that_a_test_setting_reaches() -> None:
    with LocalServer({"/a.png": serve(PNG, "image/png")}) as server:
        default_but_http = OutboundRules(schemes=frozenset({"http"}))
        assert "loopback" in _refused(server.url("/a.png"), default_but_http).message
        assert server.seen == [], "nothing connected"
        got = _fetch(server.url("/a.png"), LOCAL)
        assert got.data == PNG and got.address == "127.0.0.1" and got.content_type == "image/png"


def test_every_redirect_hop_is_checked_again() -> None:
    routes = {
        "/to-loopback": redirect("http://127.0.0.2:9/a.png"),
        "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/iam"),
        "/to-metadata-v6": redirect("http://[fd00:ec2::254]/latest/meta-data/"),
        "/to-file": redirect("file:///etc/passwd"),
        "/to-private-name": redirect("http://intranet.test/a.png", 307),
        "/to-ok": redirect("/a.png", 301),
        "/a.png": serve(PNG, "image/png"),
    }

    async def resolver(host: str, port: int) -> list[str]:
        return {"intranet.test": ["10.9.8.7"]}[host]

    with LocalServer(routes) as server:
        for path, why in (
            ("/to-loopback", "loopback"),
            ("/to-metadata", "metadata"),
            ("/to-metadata-v6", "metadata"),
            ("/to-file", "scheme"),
            ("/to-private-name", "private-network"),
        ):
            err = _refused(server.url(path), LOCAL, resolver)
            assert why in err.message, (path, err.message)
        got = _fetch(server.url("/to-ok"), LOCAL)
        assert got.redirects == 1 and got.data == PNG
        assert [p for p, _ in server.seen] == [
            *(p for p in routes if p.startswith("/to-")),
            "/a.png",
        ]


def test_a_redirect_loop_ends_at_the_limit() -> None:
    with LocalServer({"/loop": redirect("/loop")}) as server:
        err = _refused(server.url("/loop"), LOCAL)
        assert "redirected more than 5 times" in err.message
        assert len(server.seen) == 6


def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    """DNS rebinding: the name resolves to an allowed address once, to a private one after.
    Custody resolves once per hop and connects to what it checked; the name stays in Host."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    with LocalServer({"/a.png": serve(PNG, "image/png"), "/again": redirect("/a.png")}) as server:
        got = _fetch(server.url("/a.png", host="images.test"), LOCAL, rebinding)
        assert got.data == PNG and got.address == "127.0.0.1" and got.host == "images.test"
        assert calls == ["images.test"]
        assert server.seen == [("/a.png", f"images.test:{server.port}")]
        # the next hop is resolved (and checked) again: now it names a private address
        err = _refused(server.url("/again", host="images.test"), LOCAL, rebinding)
        assert "10.0.0.1" in err.message


def test_a_name_resolving_to_any_refused_address_is_refused() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"]

    assert "loopback" in _refused("https://mixed.test/a.png", resolver=mixed).message


@pytest.mark.parametrize("declared_length", [True, False])
def test_a_body_over_the_size_limit_is_abandoned(declared_length: bool) -> None:
    big = b"\0" * 300_000
    small = OutboundRules(
        schemes=LOCAL.schemes, allowed_networks=LOCAL.allowed_networks, max_bytes=100_000
    )
    with LocalServer({"/big": serve(big, "image/png", length=declared_length)}) as server:
        err = _refused(server.url("/big"), small)
        assert err.reason == "URL_INPUT_TOO_LARGE" and "100,000 bytes" in err.message


def test_a_slow_server_hits_the_time_limit() -> None:
    quick = OutboundRules(
        schemes=LOCAL.schemes, allowed_networks=LOCAL.allowed_networks, timeout_s=0.3
    )
    with LocalServer({"/slow": stall(3)}) as server:
        assert _refused(server.url("/slow"), quick).reason == "URL_INPUT_TIMEOUT"


def test_an_error_status_or_unreachable_host_is_a_clear_refusal() -> None:
    with LocalServer({}) as server:
        err = _refused(server.url("/missing.png"), LOCAL)
        assert err.reason == "URL_INPUT_UNAVAILABLE" and "HTTP 404" in err.message
        port = server.port
    err = _refused(f"http://127.0.0.1:{port}/gone.png", LOCAL)
    assert err.reason == "URL_INPUT_UNAVAILABLE"


def test_credentials_and_the_host_allow_list() -> None:
    assert "credentials" in _refused("https://u:p@example.com/a.png").message
    only = OutboundRules(hosts=("*.cdn.example",))
    assert "allow-list" in _refused("https://example.com/a.png", only).message
