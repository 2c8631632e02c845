"""A full append queue is answered at the route: 503 ``UNAVAILABLE`` in Gemini's envelope with
``Retry-After``, nothing recorded for the refused turn, and the queued turns still complete.

The gateway's ledger store is held inside one flush (a gate), so the next turn provably queues
behind it and the one after finds the queue full: no test here depends on timing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from google.genai import errors, types

from storage.ledger import BatchLimits

MODEL = "gemini-2.5-flash-image"


def _wait_for(what: Any) -> None:
    deadline = time.monotonic() + 60
    while not what():
        assert time.monotonic() < deadline, "the turn never reached the ledger queue"
        time.sleep(0.005)


def test_a_full_ledger_queue_is_503_with_retry_after_and_records_nothing(
    custody: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = custody.services.ledger
    store = ledger.store
    real_append = store.append
    gate, entered = threading.Event(), threading.Event()

    def held_append(rows: Any, side: Any) -> int:
        entered.set()
        assert gate.wait(60), "the test never released the ledger"
        return real_append(rows, side)

    monkeypatch.setattr(store, "append", held_append)
    monkeypatch.setattr(ledger.commits, "limits", BatchLimits(max_queued_entries=1))
    size_before = ledger.size()

    client = custody.client()
    results: dict[str, Any] = {}

    def turn(name: str) -> None:
        try:
            results[name] = client.models.generate_content(
                model=MODEL, contents=[f"a teal sofa, take {name}"]
            )
        except Exception as exc:  # reported by the assertions below
            results[name] = exc

    first = threading.Thread(target=turn, args=("first",))
    first.start()
    assert entered.wait(60), "the first turn never appended"
    second = threading.Thread(target=turn, args=("second",))
    second.start()
    _wait_for(lambda: ledger.commits.queued[0] == 1)  # waits behind the held flush

    try:
        with pytest.raises(errors.ServerError) as refused:
            client.models.generate_content(model=MODEL, contents=["a third sofa"])
        assert refused.value.code == 503
        assert refused.value.status == "UNAVAILABLE"
        assert "retry in" in (refused.value.message or "")

        raw = httpx.post(
            f"{custody.base_url}/v1beta/models/{MODEL}:generateContent",
            headers={"x-goog-api-key": custody.keys["editor"]},
            json={"contents": [{"role": "user", "parts": [{"text": "a fourth sofa"}]}]},
            timeout=60,
        )
        assert raw.status_code == 503
        assert int(raw.headers["retry-after"]) >= 1
        error = raw.json()["error"]
        assert (error["code"], error["status"]) == (503, "UNAVAILABLE")
        assert error["details"][0]["reason"] == "LEDGER_PUSHBACK"
    finally:
        gate.set()
        first.join(120)
        second.join(120)

    for name in ("first", "second"):  # the queued turns were not harmed
        response = results[name]
        assert isinstance(response, types.GenerateContentResponse), response
        assert response.candidates
    received = [
        e
        for e in custody.ledger_events()
        if e["type"] == "turn.received" and e["index"] >= size_before
    ]
    assert len(received) == 2, "a refused turn must leave nothing in the ledger"
