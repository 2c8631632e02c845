"""Which IP addresses an outbound fetch may connect to: public unicast only, unless allowed.

A URL input names a host; what matters is where the connection goes. Every address a host
resolves to is checked here, and the connection is made to the checked address itself (never a
second lookup), so a name that resolves to a public address once and to the metadata service
the next time reaches only the first.

Refused whatever the name: loopback, RFC 1918 private ranges, link-local (which holds the cloud
metadata address 169.254.169.254), CGNAT (100.64.0.0/10), multicast, IPv6 unique-local
(fc00::/7, which holds AWS's fd00:ec2::254), unspecified, reserved and documentation ranges — in
short, everything that is not globally routable — and IPv4 addresses written as IPv6
(``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``) are judged as the IPv4 address they carry. An
operator may allow named networks explicitly (``CUSTODY_URL_INPUT_ALLOW_NETWORKS``, e.g. a
test's 127.0.0.1/32); the metadata addresses stay refused even then.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

# (test, what to call the address in the refusal), in the order a person would name them.
_KINDS: tuple[tuple[str, str], ...] = (
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_unspecified", "the unspecified address"),
    ("is_private", "a private-network address"),
    ("is_reserved", "a reserved address"),
)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``CUSTODY_URL_INPUT_ALLOW_NETWORKS``; ValueError names a bad one."""
    out: list[Network] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP network (e.g. 127.0.0.1/32): {exc}") from None
    return tuple(out)


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_refusal(address: IPAddress, allowed: Iterable[Network] = ()) -> str | None:
    """Why a connection to ``address`` is refused (a phrase such as "a loopback address"), or
    None when it may be made."""
    seen = _embedded_ipv4(address)
    if address in METADATA_ADDRESSES or seen in METADATA_ADDRESSES:
        return "the cloud metadata address"
    if any(seen in net or address in net for net in allowed):
        return None
    if isinstance(seen, ipaddress.IPv4Address) and seen in _CGNAT:
        return "a carrier-grade NAT (100.64.0.0/10) address"
    if isinstance(seen, ipaddress.IPv6Address) and seen in ipaddress.ip_network("fc00::/7"):
        return "an IPv6 unique-local address"
    for test, name in _KINDS:
        if getattr(seen, test):
            return name
    if not seen.is_global:
        return "an address that is not globally routable"
    return None
