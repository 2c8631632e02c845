"""Upstream faults (issue 20, item 4): bounded retries, a deadline, a circuit breaker, all recorded.

A real fault upstream (``tests/fault_upstream.py``, raw sockets on loopback) plays a script per
request; the real google-genai SDK calls Custody, which forwards to it. For each fault the caller
gets either a signed image that verifies or a clear error in Gemini's envelope, and the ledger
holds every attempt: ``upstream.attempt`` for each retried one (durable before the next),
``upstream.returned`` for the answer (``attempt``, ``gave_up``), then ``turn.released`` or
``turn.failed``. Tenant ``acme`` allows 2 retries in its policy data; ``globex`` (the default
tenant) allows none. SQLite throughout, one PostgreSQL case.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from governance.provenance.verify import verify_image
from tests.fault_upstream import FaultUpstream
from tests.ledger_helpers import ORIGIN, custody_cli

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"
REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"
BASE_MS = 20
MAX_DELAY_MS = 1_000


def _policies(tmp: Path, retries: dict[str, int]) -> Path:
    """The repository's policies with ``upstream_retries`` set for some tenants."""
    target = tmp / f"policies-{uuid.uuid4().hex[:8]}"
    shutil.copytree(REPO_POLICIES, target)
    data_file = target / "custody" / "tenants" / "data.json"
    data = json.loads(data_file.read_text())
    for tenant, n in retries.items():
        data[tenant]["upstream_retries"] = n
    data_file.write_text(json.dumps(data))
    return target


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    server = FaultUpstream().start()
    try:
        yield server
    finally:
        server.stop()


def _start(tmp: Path, upstream: FaultUpstream, database_url: str = "", **settings: Any) -> Any:
    from tests.conftest import start_custody

    options: dict[str, Any] = {
        "upstream_base_url": upstream.base_url,
        "emulator": "on",  # forwards x-emulator-fault, the script header
        "policy_dir": _policies(tmp, {"acme": 2}),
        "upstream_retry_base_ms": BASE_MS,
        "upstream_retry_max_delay_ms": MAX_DELAY_MS,
        "upstream_timeout_s": 2.0,
        "upstream_breaker_threshold": 0,  # the breaker has its own test; faults here are many
        **settings,
    }
    return start_custody(tmp / "custody", database_url, **options)


@pytest.fixture(scope="module")
def gateway(upstream: FaultUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    running = _start(tmp_path_factory.mktemp("faults"), upstream)
    try:
        yield running
    finally:
        running.stop()


def _script(*steps: str) -> str:
    return f"{uuid.uuid4().hex[:10]}:{','.join(steps)}"


def _client(gateway: Any, script: str, key: str = "editor") -> genai.Client:
    opts = types.HttpOptions(base_url=gateway.base_url, headers={"x-emulator-fault": script})
    return genai.Client(api_key=gateway.keys[key], http_options=opts)


def _edit(client: genai.Client) -> types.GenerateContentResponse:
    # The caller holds ``client``: google-genai closes its HTTP client when the Client is collected.
    return client.models.generate_content(model=MODEL, contents="make the sofa teal")


def _turn_events(gateway: Any, since: int) -> list[dict[str, Any]]:
    events = [e for e in gateway.ledger_events() if e["index"] >= since and e.get("turn")]
    assert len({e["turn"] for e in events}) == 1, [e["type"] for e in events]
    return events


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["body"] for e in events if e["type"] == kind]


def _assert_signed(gateway: Any, response: types.GenerateContentResponse) -> None:
    parts = response.candidates[0].content.parts  # type: ignore[index,union-attr]
    images = [p.inline_data.data for p in parts if p.inline_data and p.inline_data.data]  # type: ignore[union-attr]
    assert images
    anchors = gateway.services.signer.trust_anchors_pem()
    for data in images:
        assert verify_image(data, None, anchors).state in ("Trusted", "Valid")


def _assert_failed(events: list[dict[str, Any]], code: int) -> dict[str, Any]:
    types_ = [e["type"] for e in events]
    assert "turn.released" not in types_ and "output.signed" not in types_
    (failed,) = _of(events, "turn.failed")
    assert failed["code"] == code
    return failed


def test_503_twice_then_an_answer_is_retried_and_every_attempt_recorded(
    gateway: Any, upstream: FaultUpstream
) -> None:
    script = _script("503", "503", "ok")
    since = gateway.services.ledger.size()
    response = _edit(_client(gateway, script))
    _assert_signed(gateway, response)
    assert upstream.requests(script.split(":")[0]) == 3
    events = _turn_events(gateway, since)
    types_ = [e["type"] for e in events]
    assert types_.index("upstream.requested") < types_.index("upstream.attempt")
    assert types_.index("upstream.attempt") < types_.index("upstream.returned")
    attempts = _of(events, "upstream.attempt")
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert all(a["status"] == 503 and a["outcome"] == "http_503" and a["retry"] for a in attempts)
    # equal jitter: between half and all of base · 2^(n-1)
    assert BASE_MS / 2 <= attempts[0]["delay_ms"] <= BASE_MS
    assert BASE_MS <= attempts[1]["delay_ms"] <= 2 * BASE_MS
    assert "fault upstream: 503" in attempts[0]["error"]
    (returned,) = _of(events, "upstream.returned")
    assert returned["status"] == 200 and returned["attempt"] == 3 and "gave_up" not in returned
    (released,) = _of(events, "turn.released")
    assert released["outputs"] == 1
    # the failed attempts and the waits count as upstream time, not as time Custody added
    waited_us = sum(a["elapsed_us"] + a["delay_ms"] * 1000 for a in attempts)
    assert released["upstream_us"] >= waited_us + returned["elapsed_us"]


def test_429_waits_exactly_its_retry_delay(gateway: Any, upstream: FaultUpstream) -> None:
    script = _script("429:0.3s", "ok")
    since = gateway.services.ledger.size()
    _assert_signed(gateway, _edit(_client(gateway, script)))
    (attempt,) = _of(_turn_events(gateway, since), "upstream.attempt")
    assert attempt["status"] == 429 and attempt["retry_after_ms"] == 300
    assert attempt["delay_ms"] == 300  # honoured as sent, no jitter


def test_429_with_a_delay_above_the_cap_goes_to_the_caller_with_its_retry_info(
    gateway: Any, upstream: FaultUpstream
) -> None:
    script = _script("429:30s")
    since = gateway.services.ledger.size()
    with pytest.raises(errors.ClientError) as caught:
        _edit(_client(gateway, script))
    assert caught.value.code == 429
    details = caught.value.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"} in details
    assert upstream.requests(script.split(":")[0]) == 1
    events = _turn_events(gateway, since)
    assert not _of(events, "upstream.attempt")
    assert _of(events, "upstream.returned")[0]["gave_up"] == "retry delay above the cap"
    _assert_failed(events, 429)


def test_429_without_retry_info_is_not_retried(gateway: Any, upstream: FaultUpstream) -> None:
    script = _script("429", "ok")
    with pytest.raises(errors.ClientError) as caught:
        _edit(_client(gateway, script))
    assert caught.value.code == 429 and upstream.requests(script.split(":")[0]) == 1


def test_500_until_the_retries_run_out_is_the_upstreams_500(
    gateway: Any, upstream: FaultUpstream
) -> None:
    script = _script("500")
    since = gateway.services.ledger.size()
    with pytest.raises(errors.ServerError) as caught:
        _edit(_client(gateway, script))
    assert caught.value.code == 500 and "fault upstream: 500" in str(caught.value.message)
    assert upstream.requests(script.split(":")[0]) == 3
    events = _turn_events(gateway, since)
    assert [a["attempt"] for a in _of(events, "upstream.attempt")] == [1, 2]
    (returned,) = _of(events, "upstream.returned")
    assert returned["attempt"] == 3 and returned["gave_up"] == "retries exhausted"
    _assert_failed(events, 500)


def test_a_tenant_without_retries_makes_one_attempt(gateway: Any, upstream: FaultUpstream) -> None:
    script = _script("503", "ok")
    since = gateway.services.ledger.size()
    with pytest.raises(errors.ServerError) as caught:
        _edit(_client(gateway, script, key="other-tenant-editor"))
    assert caught.value.code == 503 and upstream.requests(script.split(":")[0]) == 1
    events = _turn_events(gateway, since)
    assert (
        not _of(events, "upstream.attempt") and "gave_up" not in _of(events, "upstream.returned")[0]
    )


def test_a_connection_reset_is_retried(gateway: Any, upstream: FaultUpstream) -> None:
    script = _script("reset", "ok")
    since = gateway.services.ledger.size()
    _assert_signed(gateway, _edit(_client(gateway, script)))
    (attempt,) = _of(_turn_events(gateway, since), "upstream.attempt")
    assert attempt["status"] == 0 and attempt["outcome"] == "transport"


def test_a_timeout_is_retried(gateway: Any, upstream: FaultUpstream) -> None:
    script = _script("slow:4", "ok")  # the per-read timeout is 2 s
    since = gateway.services.ledger.size()
    _assert_signed(gateway, _edit(_client(gateway, script)))
    (attempt,) = _of(_turn_events(gateway, since), "upstream.attempt")
    assert attempt["outcome"] == "timeout" and "ReadTimeout" in attempt["error"]


@pytest.mark.parametrize(
    ("step", "reason"),
    [("malformed", "UPSTREAM_MALFORMED"), ("badimage", "UPSTREAM_OUTPUT_UNSUPPORTED")],
)
def test_a_completed_but_unusable_answer_is_refused_not_retried(
    gateway: Any, upstream: FaultUpstream, step: str, reason: str
) -> None:
    script = _script(step, "ok")
    since = gateway.services.ledger.size()
    with pytest.raises(errors.ServerError) as caught:
        _edit(_client(gateway, script))
    assert caught.value.code == 502
    assert upstream.requests(script.split(":")[0]) == 1  # the upstream answered: no retry
    events = _turn_events(gateway, since)
    assert not _of(events, "upstream.attempt")
    assert _assert_failed(events, 502)["reason"] == reason


def test_a_stream_cut_midway_is_an_error_and_not_retried(
    gateway: Any, upstream: FaultUpstream
) -> None:
    script = _script("cut", "ok")
    since = gateway.services.ledger.size()
    client = _client(gateway, script)  # kept: google-genai closes its HTTP client when collected
    with pytest.raises(errors.APIError) as caught:
        for _ in client.models.generate_content_stream(model=MODEL, contents="make the sofa teal"):
            pass
    assert caught.value.code == 502
    assert upstream.requests(script.split(":")[0]) == 1
    events = _turn_events(gateway, since)
    assert _assert_failed(events, 502)["reason"] == "UPSTREAM_STREAM_INCOMPLETE"
    assert not _of(events, "upstream.attempt")


def test_the_turn_deadline_bounds_the_whole_upstream_phase(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    running = _start(tmp_path, upstream, upstream_deadline_s=1.0, upstream_timeout_s=60.0)
    try:
        script = _script("slow:5", "ok")
        since = running.services.ledger.size()
        with pytest.raises(errors.ServerError) as caught:
            _edit(_client(running, script))
        assert caught.value.code == 504 and caught.value.status == "DEADLINE_EXCEEDED"
        assert "CUSTODY_UPSTREAM_DEADLINE_S" in str(caught.value.message)
        events = _turn_events(running, since)
        (returned,) = _of(events, "upstream.returned")
        assert returned["status"] == 0 and returned["gave_up"] == "deadline"
        assert upstream.requests(script.split(":")[0]) == 1  # no retry that could not finish
        _assert_failed(events, 504)
    finally:
        running.stop()


def _circuit(gateway: Any) -> dict[str, float]:
    """The breaker gauge as an operator scrapes it (it belongs to no tenant)."""
    from governance.auth.keys import create_key

    if "operator" not in gateway.keys:
        gateway.keys["operator"] = create_key(
            gateway.services.engine, tenant="custody", actor="ops@custody", roles=["operator"]
        )
    text = httpx.get(
        f"{gateway.base_url}/metrics",
        headers={"authorization": f"Bearer {gateway.keys['operator']}"},
    ).text
    states = {}
    for line in text.splitlines():
        if line.startswith("custody_upstream_circuit_state{"):
            state = line.split('state="')[1].split('"')[0]
            states[state] = float(line.rsplit(" ", 1)[1])
    return states


def test_the_circuit_breaker_opens_fails_fast_and_closes_after_a_good_trial(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    running = _start(
        tmp_path,
        upstream,
        policy_dir=_policies(tmp_path, {"acme": 0}),
        upstream_breaker_threshold=2,
        upstream_breaker_cooldown_s=30.0,
    )
    # the breaker's clock, moved by the test: a loaded machine cannot outwait the cool-down
    now = [1000.0]
    running.services.pipeline.forwarder.guard.breaker._clock = lambda: now[0]  # type: ignore[attr-defined]
    try:
        assert _circuit(running) == {"closed": 1.0, "half_open": 0.0, "open": 0.0}
        failing = _script("500")
        for _ in range(2):
            with pytest.raises(errors.ServerError):
                _edit(_client(running, failing))
        assert _circuit(running)["open"] == 1.0
        fine = _script("ok")
        since = running.services.ledger.size()
        body = {"contents": [{"role": "user", "parts": [{"text": "make it teal"}]}]}
        refused = httpx.post(
            f"{running.base_url}/v1beta/models/{MODEL}:generateContent",
            json=body,
            headers={"x-goog-api-key": running.keys["editor"], "x-emulator-fault": fine},
        )
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) == 30
        error = refused.json()["error"]
        assert error["status"] == "UNAVAILABLE" and "circuit breaker is open" in error["message"]
        reasons = [d.get("reason") for d in error["details"]]
        assert "UPSTREAM_CIRCUIT_OPEN" in reasons
        assert upstream.requests(fine.split(":")[0]) == 0  # nothing was sent
        events = _turn_events(running, since)
        (attempt,) = _of(events, "upstream.attempt")
        assert attempt["outcome"] == "circuit_open" and attempt["status"] == 0
        assert _assert_failed(events, 503)["reason"] == "UPSTREAM_CIRCUIT_OPEN"
        now[0] += 30.0  # the cool-down has passed
        assert _circuit(running)["half_open"] == 1.0
        _assert_signed(running, _edit(_client(running, fine)))  # the trial succeeds
        assert _circuit(running)["closed"] == 1.0
    finally:
        running.stop()


def test_retries_on_postgresql_record_every_attempt_and_the_ledger_verifies(
    upstream: FaultUpstream, tmp_path: Path, pg_url: str
) -> None:
    running = _start(tmp_path, upstream, pg_url, log_origin=ORIGIN)
    try:
        script = _script("reset", "503", "ok")
        since = running.services.ledger.size()
        _assert_signed(running, _edit(_client(running, script)))
        events = _turn_events(running, since)
        assert [a["outcome"] for a in _of(events, "upstream.attempt")] == ["transport", "http_503"]
        assert _of(events, "upstream.returned")[0]["attempt"] == 3
    finally:
        running.stop()
    verified = custody_cli(pg_url, tmp_path / "custody", "ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- the decisions themselves, without a server ----------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_half_open_admits_one_trial_and_a_failed_trial_reopens() -> None:
    from governance.upstream.breaker import CircuitBreaker

    clock = _Clock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    breaker.record(503)
    breaker.record(200)  # a success in between: the count starts again
    breaker.record(503)
    assert breaker.state == "closed"
    breaker.record(0)
    assert breaker.state == "open" and not breaker.admit().allowed
    clock.now = 4.0
    assert breaker.admit().retry_after_s == pytest.approx(6.0)
    clock.now = 10.0
    trial = breaker.admit()
    assert trial.allowed and trial.trial and breaker.state == "half_open"
    assert not breaker.admit().allowed  # one trial at a time
    breaker.record(500)
    assert breaker.state == "open"
    clock.now = 20.0
    assert breaker.admit().allowed
    breaker.record(429)  # a quota answer: the upstream is up
    assert breaker.state == "closed"


def test_breaker_frees_the_trial_of_a_call_that_went_away() -> None:
    from governance.upstream.breaker import CircuitBreaker

    clock = _Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=1, clock=clock)
    breaker.record(504)
    clock.now = 1.0
    assert breaker.admit().trial
    breaker.abandon()
    assert breaker.admit().trial


def test_retry_decisions_follow_retry_info_backoff_caps_and_the_deadline() -> None:
    import random

    from governance.upstream.client import UpstreamResult
    from governance.upstream.retry import RetryPolicy, next_step

    policy = RetryPolicy(retries=3, base_delay_s=1.0, max_delay_s=5.0)
    rng = random.Random(7)

    def quota(delay: object) -> UpstreamResult:
        detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
        body = json.dumps({"error": {"code": 429, "details": [detail]}}).encode()
        return UpstreamResult(429, body, {}, 1.0)

    assert next_step(quota("2.5s"), 1, policy, remaining_s=60).delay_s == 2.5
    assert next_step(quota({"seconds": 1, "nanos": 500_000_000}), 1, policy, remaining_s=60).retry
    assert next_step(quota("6s"), 1, policy, remaining_s=60).gave_up == "retry delay above the cap"
    assert next_step(quota("2s"), 1, policy, remaining_s=1.5).gave_up == "deadline"
    unavailable = UpstreamResult(503, b"{}", {}, 1.0)
    delays = [next_step(unavailable, n, policy, remaining_s=60, rng=rng).delay_s for n in (1, 2, 3)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 2.0 <= delays[2] <= 4.0
    assert next_step(unavailable, 4, policy, remaining_s=60).gave_up == "retries exhausted"
    cut = UpstreamResult(0, b"", {}, 1.0, events=[b"{}"], stream_complete=False)
    assert not next_step(cut, 1, policy, remaining_s=60).retry  # a stream that began
    assert not next_step(UpstreamResult(400, b"{}", {}, 1.0), 1, policy, remaining_s=60).retry


def test_the_built_in_emulators_faults_take_the_same_paths(tmp_path: Path) -> None:
    """Offline demos use the emulator's fault directives: a 429 with a chosen RetryInfo is
    retried after exactly that delay, malformed and unreadable answers are refused unretried."""
    from tests.conftest import start_custody

    running = start_custody(
        tmp_path / "custody",
        policy_dir=_policies(tmp_path, {"acme": 1}),
        upstream_retry_max_delay_ms=MAX_DELAY_MS,
        upstream_breaker_threshold=0,
    )
    try:
        client = running.client()
        since = running.services.ledger.size()
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=MODEL, contents="[emulator:fault=429:0.2] a cat")
        assert caught.value.code == 429
        events = _turn_events(running, since)
        (attempt,) = _of(events, "upstream.attempt")
        assert attempt["retry_after_ms"] == 200 and attempt["delay_ms"] == 200
        assert _of(events, "upstream.returned")[0]["gave_up"] == "retries exhausted"
        for fault, reason in (
            ("malformed", "UPSTREAM_MALFORMED"),
            ("badimage", "UPSTREAM_OUTPUT_UNSUPPORTED"),
        ):
            since = running.services.ledger.size()
            with pytest.raises(errors.ServerError) as failed:
                client.models.generate_content(model=MODEL, contents=f"[emulator:fault={fault}] a")
            assert failed.value.code == 502
            events = _turn_events(running, since)
            assert not _of(events, "upstream.attempt")
            assert _assert_failed(events, 502)["reason"] == reason
    finally:
        running.stop()
