"""Requests refused under overload are in their tenant's ledger, in aggregate (``requests.shed``):
the in-flight limit's 503s (attributed by a key the cache knows, nothing read from the database)
and the ledger's push-back 503s (after authentication), through the real routes, one event per
tenant per period, a flush the full ledger refuses kept for the next one. On SQLite and
PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from governance.api.request_limits import RequestLimits
from governance.auth.keys import create_key, parse_key
from storage.ledger import BatchLimits
from tests.conftest import start_custody
from tests.test_connection_hygiene import MODEL_URL, _partial_post

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"


def _key_id(key: str) -> str:
    parsed = parse_key(key)
    assert parsed is not None
    return parsed[0]


def _request_limits(custody: Any) -> RequestLimits:
    """The app's in-flight limit middleware (its stack is built by the first request)."""
    node = custody.server.server.config.app.middleware_stack
    while not isinstance(node, RequestLimits):
        node = node.app
    return node


def _shed_events(custody: Any, want: int) -> list[dict[str, Any]]:
    """The ``requests.shed`` events, once they count ``want`` refusals in all."""
    deadline = time.monotonic() + 60
    while True:
        events = [e for e in custody.ledger_events() if e["type"] == "requests.shed"]
        if sum(e["body"]["refused"] for e in events) >= want or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_inflight_refusals_are_recorded_per_tenant_for_known_keys(
    tmp_path: Path, db_url: str
) -> None:
    custody = start_custody(
        tmp_path / "c",
        db_url,
        max_inflight_requests=1,
        body_idle_timeout_s=20.0,
        shed_record_ms=200,
    )
    try:
        acme, globex = custody.keys["editor"], custody.keys["other-tenant-editor"]
        for key in (acme, globex):  # each key authenticates once: the cache knows it
            assert httpx.get(
                custody.base_url + "/v1beta/models", headers={"x-goog-api-key": key}
            ).is_success
        held = _partial_post(custody, acme, 100, b"{")  # in flight, waiting for its body
        deadline = time.monotonic() + 60
        while _request_limits(custody).inflight < 1:
            assert time.monotonic() < deadline, "the held request never started"
            time.sleep(0.01)
        sent = [(acme, 2), (globex, 1), ("ck_unknown_0000000000000000", 1), ("", 1)]
        for key, times in sent:
            for _ in range(times):
                headers = {"x-goog-api-key": key} if key else {}
                resp = httpx.post(custody.base_url + MODEL_URL, content=b"{}", headers=headers)
                assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
                error = resp.json()["error"]
                assert error["details"][0]["reason"] == "OVERLOADED"
                assert "requests.shed" in error["message"]
        held.close()
        events = _shed_events(custody, 3)
    finally:
        custody.stop()

    by_tenant: dict[str, dict[str, Any]] = {}
    for event in events:
        assert event["actor"] == "custody" and event["turn"] is None
        body = by_tenant.setdefault(event["tenant"], {"refused": 0, "reasons": {}, "keys": {}})
        body["refused"] += event["body"]["refused"]
        for field in ("reasons", "keys"):
            for name, n in event["body"][field].items():
                body[field][name] = body[field].get(name, 0) + n
        assert event["body"]["since_ms"] <= event["body"]["until_ms"]
    # the unknown key and the missing one have no tenant: they are in the metric only
    assert by_tenant == {
        "acme": {"refused": 2, "reasons": {"OVERLOADED": 2}, "keys": {_key_id(acme): 2}},
        "globex": {"refused": 1, "reasons": {"OVERLOADED": 1}, "keys": {_key_id(globex): 1}},
    }


def test_ledger_pushback_refusals_are_recorded_once_the_ledger_takes_entries_again(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    custody = start_custody(tmp_path / "c", db_url, shed_record_ms=200)
    try:
        ledger = custody.services.ledger
        real_append = ledger.store.append
        gate, entered = threading.Event(), threading.Event()

        def held_append(rows: Any, side: Any) -> int:
            entered.set()
            assert gate.wait(60), "the test never released the ledger"
            return real_append(rows, side)

        monkeypatch.setattr(ledger.store, "append", held_append)
        limits = ledger.commits.limits
        monkeypatch.setattr(ledger.commits, "limits", BatchLimits(max_queued_entries=1))
        url = f"{custody.base_url}/v1beta/models/{MODEL}:generateContent"
        headers = {"x-goog-api-key": custody.keys["editor"]}
        body = {"contents": [{"role": "user", "parts": [{"text": "a teal sofa"}]}]}
        results: list[int] = []

        def turn() -> None:
            results.append(httpx.post(url, headers=headers, json=body, timeout=120).status_code)

        first = threading.Thread(target=turn)
        first.start()
        assert entered.wait(60), "the first turn never appended"
        second = threading.Thread(target=turn)
        second.start()
        deadline = time.monotonic() + 60
        while ledger.commits.queued[0] < 1:  # the second waits behind the held flush
            assert time.monotonic() < deadline
            time.sleep(0.005)
        try:
            for _ in range(3):
                refused = httpx.post(url, headers=headers, json=body, timeout=60)
                assert refused.status_code == 503
                assert refused.json()["error"]["details"][0]["reason"] == "LEDGER_PUSHBACK"
            time.sleep(0.5)  # flushes tried meanwhile are pushed back too, and keep their counts
        finally:
            # Room again before the held flush ends: else the first turn's next append can
            # meet the second's queued entry and be pushed back too (a fourth 503).
            ledger.commits.limits = limits
            gate.set()
            first.join(120)
            second.join(120)
        assert results == [200, 200]
        events = _shed_events(custody, 3)
        operator = create_key(
            custody.services.engine, tenant="custody", actor="ops@custody", roles=["operator"]
        )
        scrape = httpx.get(
            custody.base_url + "/metrics", headers={"authorization": f"Bearer {operator}"}
        ).text
        assert 'custody_requests_shed_total{reason="ledger_pushback"} 3.0' in scrape
    finally:
        custody.stop()
    assert [(e["tenant"], e["body"]["reasons"]) for e in events] == [
        ("acme", {"LEDGER_PUSHBACK": 3})
    ]
    assert events[0]["body"]["keys"] == {_key_id(custody.keys["editor"]): 3}


def test_a_record_names_the_64_keys_with_most_refusals_and_counts_the_rest_as_other(
    custody: Any,
) -> None:
    from governance.auth.principal import Principal
    from governance.shed_records import MAX_KEYS_PER_RECORD, ShedTally

    tally = ShedTally()
    for n in range(MAX_KEYS_PER_RECORD + 6):
        principal = Principal(f"k{n:03d}", "acme", f"a{n}@acme", frozenset({"editor"}))
        for _ in range(1 + (n < 10)):  # the first ten keys were refused twice
            tally.count(principal, "OVERLOADED")
    ledger = custody.services.ledger
    assert tally.flush(ledger) == MAX_KEYS_PER_RECORD + 16
    (event,) = [e for e in custody.ledger_events() if e["type"] == "requests.shed"]
    keys = event["body"]["keys"]
    assert len(keys) == MAX_KEYS_PER_RECORD + 1 and keys["other"] == 6
    assert all(keys[f"k{n:03d}"] == 2 for n in range(10))
    assert event["body"]["refused"] == sum(keys.values()) and tally.pending() == 0
    size = ledger.size()
    assert tally.flush(ledger) == 0 and ledger.size() == size  # nothing new: nothing written
