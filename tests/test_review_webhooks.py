"""Review webhooks: signed deliveries of new tasks, decisions and deadline outcomes, retried with
backoff and recorded per attempt; the documented verifier accepts a good delivery and refuses a
tampered, stale or replayed one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from governance.outbound.addresses import parse_networks
from governance.review import WebhookRegistry, WebhookSender
from governance.review.webhook_verify import (
    ReplayGuard,
    WebhookVerificationError,
    signature_header,
    verify_webhook,
)
from governance.upstream.embedded import ThreadedServer
from tests.conftest import RunningCustody, start_custody
from tests.review_helpers import add_member, api, decide, open_task

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


@dataclass
class Receiver:
    """A webhook endpoint on loopback that answers 500 to its first ``fail_first`` requests."""

    fail_first: int = 0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.received.append((headers, body))
            status = 500 if len(self.received) <= self.fail_first else 204
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture()
def receiver() -> Iterator[tuple[Receiver, str]]:
    app = Receiver(fail_first=1)
    server = ThreadedServer(app).start()
    try:
        yield app, server.base_url + "/hooks/custody?token=receiver-own-token"
    finally:
        server.stop()


LOOPBACK = ["127.0.0.1/32"]  # the receivers of these tests listen on loopback


@pytest.fixture()
def custody(db_url: str, tmp_path: Path) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path / "custody", db_url, webhook_allow_networks=LOOPBACK)
    try:
        yield running
    finally:
        running.stop()


def _wait_for(receiver: Receiver, count: int) -> None:
    for _ in range(300):
        if len(receiver.received) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{len(receiver.received)} deliveries arrived, expected {count}")


def test_review_events_are_delivered_signed_retried_and_recorded(
    custody: RunningCustody, receiver: tuple[Receiver, str]
) -> None:
    app, url = receiver
    made = api(custody, custody.keys["admin"], "POST", "/api/v1/webhooks", json={"url": url})
    assert made.status_code == 200, made.text
    secret = made.json()["secret"]
    assert secret.startswith("whsec_")
    listed = api(custody, custody.keys["admin"], "GET", "/api/v1/webhooks").json()
    assert "secret" not in str(listed)
    add_member(custody, "reviewers", "reviewer@acme")

    task = open_task(custody)
    _wait_for(app, 2)  # review.opened: refused once with 500, then retried after the backoff
    first, retry = app.received[0], app.received[1]
    assert first[1] == retry[1]  # the same body, signed afresh
    event = verify_webhook(retry[1], retry[0]["custody-signature"], secret)
    assert event["type"] == "review.opened" and event["data"]["task"] == task.task_id
    assert retry[0]["custody-delivery"] == event["id"]

    decide(custody, custody.keys["reviewer"], task, "reject", "no model release")
    _wait_for(app, 4)
    kinds = [verify_webhook(b, h["custody-signature"], secret) for h, b in app.received[2:4]]
    assert sorted(k["type"] for k in kinds) == ["review.decided", "review.rejected"]
    assert {k["data"]["reason"] for k in kinds} == {"no model release"}

    for _ in range(300):  # the last attempt's event is appended just after its answer
        events = custody.ledger_events()
        if sum(e["type"] == "webhook.delivered" for e in events) == 3:
            break
        time.sleep(0.05)
    attempts = [e for e in events if str(e["type"]).startswith("webhook.")]
    failed = [e["body"] for e in attempts if e["type"] == "webhook.failed"]
    delivered = [e["body"] for e in attempts if e["type"] == "webhook.delivered"]
    assert [(f["attempt"], f["status_code"], f["final"]) for f in failed] == [(1, 500, False)]  # type: ignore[index]
    assert failed[0]["delivery"] == event["id"]  # type: ignore[index]
    assert sorted(d["attempt"] for d in delivered) == [1, 1, 2]  # type: ignore[index]
    leaves = str(events)
    assert secret not in leaves and "receiver-own-token" not in leaves  # no secret, no URL
    assert {e["type"] for e in attempts} >= {"webhook.registered"}


def test_a_delivery_that_keeps_failing_gives_up_after_the_last_attempt(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("governance.background.REVIEW_UPKEEP_MS", 10**9)  # this test sends
    custody = start_custody(tmp_path / "custody", db_url)
    try:
        _gives_up(custody)
    finally:
        custody.stop()


def _gives_up(custody: RunningCustody) -> None:
    services = custody.services
    registry = WebhookRegistry(services.engine, services.ledger)  # type: ignore[attr-defined]
    # Nothing listens on port 9 of loopback (discard): every attempt is a connection error.
    hook, _secret = registry.register(
        tenant="acme",
        url="http://127.0.0.1:9/x",
        by="admin@acme",
        allowed_networks=parse_networks(LOOPBACK),
    )
    open_task(custody)
    sender = WebhookSender(
        services.engine,  # type: ignore[attr-defined]
        services.ledger,  # type: ignore[attr-defined]
        backoff_base_ms=0,
        max_attempts=3,
        allowed_networks=parse_networks(LOOPBACK),
    )
    assert sender.backoff_ms(1) == 0
    assert WebhookSender(None, None).backoff_ms(3) == 8_000  # type: ignore[arg-type]
    attempts = []
    for _ in range(3):
        attempts += sender.deliver_due()
    mine = [a for a in attempts if not a.delivered]
    assert [a.attempt for a in mine][-1] == 3 and mine[-1].final
    assert sender.deliver_due() == []  # given up: nothing due any more
    removed = api(custody, custody.keys["admin"], "DELETE", f"/api/v1/webhooks/{hook.webhook_id}")
    assert removed.status_code == 200
    assert api(custody, custody.keys["admin"], "GET", "/api/v1/webhooks").json()["webhooks"] == []


def test_a_webhook_url_must_be_http_and_admins_manage_only_their_tenant(
    custody: RunningCustody,
) -> None:
    bad = api(custody, custody.keys["admin"], "POST", "/api/v1/webhooks", json={"url": "ftp://x"})
    assert bad.status_code == 400
    other = api(
        custody,
        custody.keys["admin"],
        "POST",
        "/api/v1/webhooks",
        json={"url": "https://example.org/h", "tenant": "globex"},
    )
    assert other.status_code == 403
    assert api(custody, custody.keys["reviewer"], "GET", "/api/v1/webhooks").status_code == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.7/hook",
        "http://[::ffff:10.1.2.3]:8080/hook",
        "https://user:pw@hooks.example/h",
    ],
)
def test_a_webhook_to_a_private_or_metadata_address_is_refused_at_registration(
    custody: RunningCustody, url: str
) -> None:
    made = api(custody, custody.keys["admin"], "POST", "/api/v1/webhooks", json={"url": url})
    assert made.status_code == 400, made.text
    assert made.json()["error"]["details"][0]["reason"] in {
        "WEBHOOK_ADDRESS_REFUSED",
        "BAD_WEBHOOK_URL",
    }
    assert api(custody, custody.keys["admin"], "GET", "/api/v1/webhooks").json()["webhooks"] == []


def test_a_name_that_resolves_to_loopback_gets_no_delivery(
    db_url: str, tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """The name passes registration; where it resolves is judged at every delivery, and a
    refused address ends the delivery at once (recorded as failed, final), sending nothing."""
    app, url = receiver
    custody = start_custody(tmp_path / "custody", db_url)  # no network allowed
    try:
        by_name = url.replace("127.0.0.1", "localhost")
        admin = custody.keys["admin"]
        made = api(custody, admin, "POST", "/api/v1/webhooks", json={"url": by_name})
        assert made.status_code == 200, made.text
        add_member(custody, "reviewers", "reviewer@acme")
        open_task(custody)
        for _ in range(300):
            failed = [e["body"] for e in custody.ledger_events() if e["type"] == "webhook.failed"]
            if failed:
                break
            time.sleep(0.05)
        assert failed, "no webhook.failed recorded"
        body = failed[0]
        assert body["final"] is True and body["attempt"] == 1  # type: ignore[index]
        assert "loopback" in str(body["error"]) and "refused" in str(body["error"])  # type: ignore[index]
        assert app.received == []
    finally:
        custody.stop()


def test_a_delivery_goes_to_the_address_that_was_checked(
    db_url: str,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No second lookup: the sender connects to the address its own resolution checked and
    keeps the name in Host (a name that resolves nowhere else still reaches the receiver)."""
    monkeypatch.setattr("governance.background.REVIEW_UPKEEP_MS", 10**9)  # this test sends
    app, url = receiver
    port = url.split("127.0.0.1:", 1)[1].split("/", 1)[0]
    custody = start_custody(tmp_path / "custody", db_url)
    try:
        services = custody.services
        registry = WebhookRegistry(services.engine, services.ledger)  # type: ignore[attr-defined]
        registry.register(tenant="acme", url=f"http://hooks.invalid:{port}/h", by="admin@acme")
        lookups: list[str] = []

        def resolve(host: str, _port: int) -> list[str]:
            lookups.append(host)
            return ["127.0.0.1"]

        open_task(custody)
        sender = WebhookSender(
            services.engine,  # type: ignore[attr-defined]
            services.ledger,  # type: ignore[attr-defined]
            backoff_base_ms=0,
            allowed_networks=parse_networks(LOOPBACK),
            resolve=resolve,
        )
        attempts = sender.deliver_due() + sender.deliver_due()  # the receiver fails the first
        assert [a.delivered for a in attempts] == [False, True]
        assert lookups == ["hooks.invalid", "hooks.invalid"]  # one lookup per attempt, checked
        assert {h["host"] for h, _ in app.received} == {f"hooks.invalid:{port}"}
    finally:
        custody.stop()


SECRET = "whsec_test-secret"
BODY = b'{"data":{"task":"t1"},"id":"d1","type":"review.opened"}'


def test_the_verifier_accepts_a_good_delivery() -> None:
    now = 1_800_000_000
    header = signature_header(SECRET, BODY, now)
    assert verify_webhook(BODY, header, SECRET, now=now + 10)["id"] == "d1"
    rotated = f"{header},v1={'0' * 64}"  # several signatures: one matching is enough
    assert verify_webhook(BODY, rotated, SECRET, now=now)["type"] == "review.opened"


@pytest.mark.parametrize(
    ("body", "secret", "skew_s"),
    [
        (BODY.replace(b"t1", b"t2"), SECRET, 0),  # tampered body
        (BODY, "whsec_another", 0),  # another secret
        (BODY, SECRET, 301),  # replayed after the window
        (BODY, SECRET, -301),  # signed in the future
    ],
    ids=["tampered", "wrong-secret", "stale", "future"],
)
def test_the_verifier_refuses(body: bytes, secret: str, skew_s: int) -> None:
    now = 1_800_000_000
    header = signature_header(SECRET, BODY, now)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, header, secret, now=now + skew_s)


def test_the_verifier_refuses_a_malformed_header_and_a_replay_inside_the_window() -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, "v1=abc", SECRET)
    now = 1_800_000_000
    guard = ReplayGuard()
    event = verify_webhook(BODY, signature_header(SECRET, BODY, now), SECRET, now=now)
    guard.check(event, now=now)
    replayed = verify_webhook(BODY, signature_header(SECRET, BODY, now), SECRET, now=now + 5)
    with pytest.raises(WebhookVerificationError):
        guard.check(replayed, now=now + 5)
