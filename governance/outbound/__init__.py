"""Outbound fetches Custody makes on a caller's behalf (URL inputs): ``addresses`` (which
addresses may be reached at all) and ``url_fetch`` (one guarded fetch, every hop checked)."""

from governance.outbound.addresses import address_refusal
from governance.outbound.url_fetch import FetchedUrl, OutboundRules, UrlFetcher, UrlInputError

__all__ = ["FetchedUrl", "OutboundRules", "UrlFetcher", "UrlInputError", "address_refusal"]
