"""What the upstream that answered a turn is, from facts: its endpoint and its ``modelVersion``.

A signed manifest is a public statement. It may name Google (and repeat Google's SynthID claim)
only when both facts say Google: the request went over https to one of Google's Gemini endpoints
(``generativelanguage.googleapis.com``, Vertex AI's ``aiplatform.googleapis.com`` or
``<region>-aiplatform.googleapis.com``) and the answer's ``modelVersion`` is not the Custody
emulator's. A Custody emulator (built in, or standalone behind ``CUSTODY_UPSTREAM_BASE_URL``) is
named as such: the explicit emulator flag, or a ``modelVersion`` starting ``custody-emulator``.
Anything else is ``unknown``, with its host — never Google by default.

Data only: no I/O, no imports from the rest of Custody.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

ProviderKind = Literal["google", "custody-emulator", "unknown"]

GOOGLE_HOSTS = frozenset({"generativelanguage.googleapis.com", "aiplatform.googleapis.com"})
GOOGLE_REGIONAL_SUFFIX = "-aiplatform.googleapis.com"
EMULATOR_MODEL_VERSION_PREFIX = "custody-emulator"


@dataclass(frozen=True)
class UpstreamIdentity:
    """Who answered: ``kind`` and the endpoint's host (lower case, no port)."""

    kind: ProviderKind
    host: str

    @property
    def is_google(self) -> bool:
        return self.kind == "google"

    @property
    def is_emulator(self) -> bool:
        return self.kind == "custody-emulator"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "host": self.host}


def is_google_endpoint(base_url: str) -> bool:
    """True only for https to one of Google's Gemini API hosts on the default port."""
    try:
        parts = urlsplit(base_url.strip())
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() != "https" or port not in (None, 443) or parts.username is not None:
        return False
    if host in GOOGLE_HOSTS:
        return True
    region = host.removesuffix(GOOGLE_REGIONAL_SUFFIX)
    return region != host and bool(region) and region.replace("-", "").isalnum()


def is_emulator_model_version(model_version: str | None) -> bool:
    """The Custody emulator always says so: ``custody-emulator-<version> (emulating <model>)``."""
    return (model_version or "").strip().lower().startswith(EMULATOR_MODEL_VERSION_PREFIX)


def identify_upstream(
    base_url: str, *, is_emulator: bool, model_version: str | None
) -> UpstreamIdentity:
    """The upstream's identity for one answer (see the module docstring for the rules)."""
    try:
        host = (urlsplit(base_url.strip()).hostname or "").lower()
    except ValueError:
        host = ""
    host = host or base_url.strip() or "(no endpoint)"
    if is_emulator or is_emulator_model_version(model_version):
        return UpstreamIdentity("custody-emulator", host)
    if is_google_endpoint(base_url):
        return UpstreamIdentity("google", host)
    return UpstreamIdentity("unknown", host)
