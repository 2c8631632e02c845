"""Review webhooks: per-tenant endpoints, an outbox of signed deliveries, retries with backoff.

A tenant's admin registers an endpoint URL; Custody generates its secret (``whsec_…``) and shows
it once. Every review event of the tenant (``review.opened``, ``review.decided`` and each
outcome) becomes one delivery row per endpoint, written in the same transaction as the change it
announces (an outbox: no change without its delivery, no delivery of a change that did not
happen). A background job in any gateway process claims due deliveries (a compare-and-set on
``locked_until_ms``, so two processes never send the same attempt), POSTs the stored body and
signs each attempt afresh: header ``Custody-Signature: t=<unix seconds>,v1=<hex>``, the hex being
HMAC-SHA256(secret, ``t + "." + body``) — Stripe's scheme; receivers check it with
``governance.review.webhook_verify``. A 2xx answer delivers; anything else retries after
``BACKOFF_BASE_MS · 2^(attempt-1)`` (capped at ``BACKOFF_CAP_MS``) until ``MAX_ATTEMPTS``.

Every attempt is a ledger event (``webhook.delivered`` or ``webhook.failed``) naming the
delivery, the endpoint's id, the attempt and the answer's status; never the secret, and never
the URL (endpoint URLs often carry a token of their own), only its host.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, Engine, insert, select, update

from governance.auth.keys import now_ms
from governance.ledger_vocabulary import ledger_event
from governance.outbound.addresses import Network, address_refusal
from governance.review.errors import ReviewError
from governance.review.webhook_verify import SIGNATURE_HEADER, signature_header
from storage.ledger.events import SideRows
from storage.ledger.log import Ledger
from storage.schema.reviews import REVIEW_WEBHOOKS as HOOKS
from storage.schema.reviews import WEBHOOK_DELIVERIES as DELIVERIES

log = logging.getLogger("custody")

SECRET_PREFIX = "whsec_"
MAX_ATTEMPTS = 8
BACKOFF_BASE_MS = 2_000
BACKOFF_CAP_MS = 3_600_000
SEND_TIMEOUT_S = 10.0
LOCK_MS = 60_000
BATCH = 20
MAX_URL_CHARS = 2_048
MAX_ERROR_CHARS = 512

DELIVERY_COLUMNS = (
    "delivery_id",
    "webhook_id",
    "tenant",
    "event_type",
    "task_id",
    "payload",
    "status",
    "attempts",
    "next_attempt_ms",
    "created_ms",
)


@dataclass(frozen=True)
class Webhook:
    """An endpoint as listings show it: never its secret."""

    webhook_id: str
    tenant: str
    url: str
    created_ms: int
    created_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.webhook_id,
            "tenant": self.tenant,
            "url": self.url,
            "created_ms": self.created_ms,
            "created_by": self.created_by,
        }


def url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), from the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


class WebhookAddressRefused(Exception):
    """The webhook's host is, or resolves to, an address Custody does not send to."""


def check_url(url: str, allowed_networks: Sequence[Network] = ()) -> str:
    """``url`` if it may be registered; a literal address is judged now (a name at every
    delivery, where it resolves), by the same rule as URL inputs."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or len(url) > MAX_URL_CHARS:
        raise ReviewError(
            400,
            f"A webhook URL is an absolute http(s) URL of at most {MAX_URL_CHARS} characters"
            " (https outside a private network).",
            "BAD_WEBHOOK_URL",
        )
    if parts.username is not None or parts.password is not None:
        raise ReviewError(
            400, "A webhook URL carries no credentials (user:password@).", "BAD_WEBHOOK_URL"
        )
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url
    why = address_refusal(literal, allowed_networks)
    if why is not None:
        raise ReviewError(
            400,
            f"Custody does not send webhooks to {literal}, {why}; an operator can allow a"
            " private network with CUSTODY_WEBHOOK_ALLOW_NETWORKS (never the metadata address).",
            "WEBHOOK_ADDRESS_REFUSED",
        )
    return url


def pinned_target(
    url: str, allowed_networks: Sequence[Network], resolve: Resolver = system_resolver
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Where to send a delivery for ``url``: the URL with its host replaced by a checked address,
    the Host header and the TLS server name kept as the name (the certificate is still checked
    against it). Every address the name resolves to must pass ``address_refusal``; the
    connection goes to the one checked, never to a second lookup (no DNS-rebinding window)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            raise WebhookAddressRefused(
                f"{host[:255]} does not resolve ({exc.strerror or exc})"
            ) from None
    if not addresses:
        raise WebhookAddressRefused(f"{host[:255]} resolves to no address")
    for text in addresses:
        why = address_refusal(ipaddress.ip_address(text), allowed_networks)
        if why is not None:
            raise WebhookAddressRefused(
                f"{host[:255]} resolves to {text}, {why} (CUSTODY_WEBHOOK_ALLOW_NETWORKS)"
            )
    address = addresses[0]
    shown = f"[{address}]" if ":" in address else address
    netloc = shown if parts.port is None else f"{shown}:{parts.port}"
    target = parts._replace(netloc=netloc).geturl()
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return target, {"Host": host_header}, extensions


def encode_payload(payload: dict[str, Any]) -> str:
    """The exact body every attempt of a delivery sends (and signs)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _active(conn: Connection, tenant: str) -> list[str]:
    rows = conn.execute(
        select(HOOKS.c.webhook_id).where(HOOKS.c.tenant == tenant, HOOKS.c.removed_ms.is_(None))
    )
    return [r.webhook_id for r in rows]


def _rows(
    hooks: Sequence[str], tenant: str, events: Sequence[tuple[str, str | None, dict[str, Any]]]
) -> list[tuple[Any, ...]]:
    now = now_ms()
    out = []
    for hook in hooks:
        for event_type, task_id, data in events:
            delivery_id = uuid.uuid4().hex
            payload = {
                "id": delivery_id,
                "type": event_type,
                "tenant": tenant,
                "created_ms": now,
                "data": data,
            }
            out.append(
                (
                    delivery_id,
                    hook,
                    tenant,
                    event_type,
                    task_id,
                    encode_payload(payload),
                    "pending",
                    0,
                    now,
                    now,
                )
            )
    return out


def enqueue(
    conn: Connection, tenant: str, events: Sequence[tuple[str, str | None, dict[str, Any]]]
) -> int:
    """Queue ``events`` (type, task id, data) for every endpoint of ``tenant``, inside the
    caller's transaction on ``conn``; returns how many deliveries were queued."""
    rows = _rows(_active(conn, tenant), tenant, events)
    if rows:
        conn.execute(
            insert(DELIVERIES), [dict(zip(DELIVERY_COLUMNS, r, strict=True)) for r in rows]
        )
    return len(rows)


def delivery_side_rows(
    engine: Engine, tenant: str, events: Sequence[tuple[str, str | None, dict[str, Any]]]
) -> list[SideRows]:
    """The same deliveries as side rows of a ledger append (fresh keys: they cannot conflict)."""
    with engine.connect() as conn:
        hooks = _active(conn, tenant)
    rows = _rows(hooks, tenant, events)
    return [SideRows("review_webhook_deliveries", DELIVERY_COLUMNS, rows)] if rows else []


class WebhookRegistry:
    """Register, list and remove a tenant's endpoints; each change is a ledger event."""

    def __init__(self, engine: Engine, ledger: Ledger) -> None:
        self.engine = engine
        self.ledger = ledger

    def register(
        self, *, tenant: str, url: str, by: str, allowed_networks: Sequence[Network] = ()
    ) -> tuple[Webhook, str]:
        """A new endpoint and its secret, which is returned this once."""
        check_url(url, allowed_networks)
        hook = Webhook(uuid.uuid4().hex, tenant, url, now_ms(), by)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = (hook.webhook_id, tenant, url, secret, hook.created_ms, by)
        body = {"webhook": hook.webhook_id, "host": url_host(url), "by": by}
        self.ledger.append(
            [ledger_event("webhook.registered", body, tenant=tenant, actor=by)],
            [
                SideRows(
                    "review_webhooks",
                    ("webhook_id", "tenant", "url", "secret", "created_ms", "created_by"),
                    [row],
                )
            ],
        )
        return hook, secret

    def endpoints(self, tenant: str | None) -> list[Webhook]:
        query = select(HOOKS).where(HOOKS.c.removed_ms.is_(None)).order_by(HOOKS.c.created_ms)
        if tenant is not None:
            query = query.where(HOOKS.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [
                Webhook(r.webhook_id, r.tenant, r.url, int(r.created_ms), r.created_by)
                for r in conn.execute(query)
            ]

    def remove(self, webhook_id: str, *, tenant: str | None, by: str) -> Webhook:
        """Stop delivering to an endpoint (``tenant`` None: an operator, any tenant's)."""
        found = [h for h in self.endpoints(tenant) if h.webhook_id == webhook_id]
        if not found:
            raise ReviewError(
                404,
                f"There is no webhook {webhook_id!r} here: list them with GET /api/v1/webhooks.",
                "WEBHOOK_NOT_FOUND",
            )
        hook = found[0]
        with self.engine.begin() as conn:
            conn.execute(
                update(HOOKS)
                .where(HOOKS.c.webhook_id == webhook_id, HOOKS.c.removed_ms.is_(None))
                .values(removed_ms=now_ms())
            )
            conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.webhook_id == webhook_id, DELIVERIES.c.status == "pending")
                .values(status="failed", done_ms=now_ms(), last_error="webhook removed")
            )
        body = {"webhook": webhook_id, "host": url_host(hook.url), "by": by}
        self.ledger.append([ledger_event("webhook.removed", body, tenant=hook.tenant, actor=by)])
        return hook


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    attempt: int
    delivered: bool
    status_code: int | None
    final: bool


class WebhookSender:
    """Sends due deliveries; one call of ``deliver_due`` is one tick of the background job."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], int] = now_ms,
        backoff_base_ms: int = BACKOFF_BASE_MS,
        backoff_cap_ms: int = BACKOFF_CAP_MS,
        max_attempts: int = MAX_ATTEMPTS,
        allowed_networks: Sequence[Network] = (),
        resolve: Resolver = system_resolver,
    ) -> None:
        self.allowed_networks = tuple(allowed_networks)
        self.resolve = resolve
        self.engine = engine
        self.ledger = ledger
        self.client = client
        self.clock = clock
        self.backoff_base_ms = backoff_base_ms
        self.backoff_cap_ms = backoff_cap_ms
        self.max_attempts = max_attempts

    def backoff_ms(self, attempts: int) -> int:
        """The wait after the ``attempts``-th failed attempt."""
        return int(min(self.backoff_cap_ms, self.backoff_base_ms * 2 ** (attempts - 1)))

    def _claim(self, now: int) -> list[Any]:
        with self.engine.connect() as conn:
            due = conn.execute(
                select(DELIVERIES.c.delivery_id)
                .where(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_ms <= now)
                .order_by(DELIVERIES.c.next_attempt_ms)
                .limit(BATCH)
            ).all()
        claimed = []
        for (delivery_id,) in due:
            with self.engine.begin() as conn:
                won = conn.execute(
                    update(DELIVERIES)
                    .where(
                        DELIVERIES.c.delivery_id == delivery_id,
                        DELIVERIES.c.status == "pending",
                        (DELIVERIES.c.locked_until_ms.is_(None))
                        | (DELIVERIES.c.locked_until_ms <= now),
                    )
                    .values(locked_until_ms=now + LOCK_MS)
                ).rowcount
                if won:
                    claimed.append(
                        conn.execute(
                            select(DELIVERIES, HOOKS.c.url, HOOKS.c.secret)
                            .join(HOOKS, HOOKS.c.webhook_id == DELIVERIES.c.webhook_id)
                            .where(DELIVERIES.c.delivery_id == delivery_id)
                        ).one()
                    )
        return claimed

    def deliver_due(self) -> list[Attempt]:
        """Send every due delivery this process claims; record each attempt."""
        out: list[Attempt] = []
        claimed = self._claim(self.clock())
        if not claimed:
            return out
        client = self.client or httpx.Client(timeout=SEND_TIMEOUT_S, follow_redirects=False)
        try:
            for row in claimed:
                out.append(self._attempt(client, row))
        finally:
            if self.client is None:
                client.close()
        return out

    def _attempt(self, client: httpx.Client, row: Any) -> Attempt:
        body = row.payload.encode()
        timestamp = self.clock() // 1000
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: signature_header(row.secret, body, timestamp),
            "Custody-Delivery": row.delivery_id,
            "Custody-Event": row.event_type,
            "user-agent": "Custody-Webhooks/1",
        }
        status: int | None = None
        error = ""
        refused = False
        try:
            target, host, extensions = pinned_target(row.url, self.allowed_networks, self.resolve)
            resp = client.post(
                target, content=body, headers={**headers, **host}, extensions=extensions
            )
            status = resp.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except WebhookAddressRefused as exc:
            error, refused = f"refused: {exc}"[:MAX_ERROR_CHARS], True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        attempts = int(row.attempts) + 1
        delivered = not error
        final = delivered or refused or attempts >= self.max_attempts
        now = self.clock()
        next_ms = now if final else now + self.backoff_ms(attempts)
        with self.engine.begin() as conn:
            conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.delivery_id == row.delivery_id)
                .values(
                    status="delivered" if delivered else ("failed" if final else "pending"),
                    attempts=attempts,
                    next_attempt_ms=next_ms,
                    locked_until_ms=None,
                    last_status=status,
                    last_error=error or None,
                    done_ms=now if final else None,
                )
            )
        event_body: dict[str, Any] = {
            "delivery": row.delivery_id,
            "webhook": row.webhook_id,
            "host": url_host(row.url),
            "event": row.event_type,
            "task": row.task_id,
            "attempt": attempts,
            "status_code": status,
            "final": final,
        }
        if not delivered:
            event_body["error"] = error
            event_body["next_attempt_ms"] = None if final else next_ms
            log.warning(
                "webhook %s delivery %s attempt %d failed: %s",
                row.webhook_id,
                row.delivery_id,
                attempts,
                error,
            )
        self.ledger.append(
            [
                ledger_event(
                    "webhook.delivered" if delivered else "webhook.failed",
                    event_body,
                    tenant=row.tenant,
                    actor="custody",
                )
            ]
        )
        return Attempt(row.delivery_id, attempts, delivered, status, final)
