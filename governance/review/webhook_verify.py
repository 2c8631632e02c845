"""Check a Custody review webhook: its signature, its age, and that it was not seen before.

For receivers (it imports only the standard library: copy it into any Python service). Custody
sends each delivery as a POST with the JSON body and the header

    Custody-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>

(several ``v1=`` entries may appear; one matching is enough). ``verify_webhook`` accepts a
delivery only when a signature matches the exact body bytes and ``t`` lies within
``tolerance_s`` (default 300 s) of the receiver's clock, either side; a ``ReplayGuard`` then
refuses a second delivery of the same ``id`` inside that window (each retry of one delivery is
signed afresh but keeps its ``id``: process an id once). Outside the window the timestamp check
already refuses it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SIGNATURE_HEADER = "Custody-Signature"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """The delivery is not authentic, too old or too new, or a replay: reject it (HTTP 400)."""


def compute_signature(secret: str, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``."""
    signed = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """The value of ``Custody-Signature`` for ``body`` sent at ``timestamp``."""
    return f"t={int(timestamp)},v1={compute_signature(secret, body, timestamp)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookVerificationError(
            f"the {SIGNATURE_HEADER} header must read t=<unix seconds>,v1=<hex signature>"
        )
    return timestamp, signatures


def verify_webhook(
    body: bytes,
    header: str,
    secret: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivered event (parsed JSON) when ``header`` signs ``body`` with ``secret`` within
    the window; else ``WebhookVerificationError``."""
    timestamp, signatures = _parse(header or "")
    expected = compute_signature(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise WebhookVerificationError("no signature matches this body and secret")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"the delivery was signed {int(clock - timestamp)} s from now, outside the"
            f" {tolerance_s} s window: a replay, or a clock to fix"
        )
    event: dict[str, Any] = json.loads(body)
    return event


class ReplayGuard:
    """Remembers delivery ids seen inside the window; a second one is a replay."""

    def __init__(self, tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
        self.tolerance_s = tolerance_s
        self._seen: dict[str, float] = {}

    def check(self, event: dict[str, Any], *, now: float | None = None) -> None:
        clock = time.time() if now is None else now
        horizon = clock - 2 * self.tolerance_s
        self._seen = {k: t for k, t in self._seen.items() if t >= horizon}
        delivery = str(event.get("id", ""))
        if not delivery or delivery in self._seen:
            raise WebhookVerificationError(f"delivery {delivery!r} was already received")
        self._seen[delivery] = clock
