"""One rate-limit rule on the one closing path: a turn that releases nothing gives its place back.

Through the real route, against the built-in emulator, on SQLite and PostgreSQL: turns of tenant
``ratelimited`` (the default policy gives each actor a small per-minute budget) that the upstream
fails still record ``turn.failed``, and leave the whole budget to the turns that follow.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"


def _turn(base_url: str, key: str, fault: str | None = None) -> httpx.Response:
    headers = {"x-goog-api-key": key}
    if fault:
        headers["x-emulator-fault"] = fault
    return httpx.post(
        f"{base_url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}]},
        headers=headers,
        timeout=120,
    )


def test_turns_the_upstream_failed_give_their_rate_limit_place_back(
    tmp_path: Path, db_url: str
) -> None:
    from governance.auth.keys import create_key

    # No circuit breaker: its default (5 failures in a row) would refuse the turns after the
    # failing ones with 503 UPSTREAM_CIRCUIT_OPEN, which is tested in test_upstream_faults.
    running = start_custody(tmp_path / "custody", db_url, upstream_breaker_threshold=0)
    try:
        key = create_key(
            running.services.engine,  # type: ignore[attr-defined]
            tenant="ratelimited",
            actor="retry@ratelimited",
            roles=["editor"],
        )
        limit = running.services.policy.rate_limit_for("ratelimited")  # type: ignore[attr-defined]
        failed = [_turn(running.base_url, key, fault="503") for _ in range(limit)]
        assert [r.status_code for r in failed] == [503] * limit
        assert {r.json()["error"]["details"][-1]["reason"] for r in failed} == {"UPSTREAM_ERROR"}
        released = [_turn(running.base_url, key) for _ in range(limit)]
        assert [r.status_code for r in released] == [200] * limit  # the whole budget is left
        assert _turn(running.base_url, key).status_code == 429  # and it still holds
        closing = [
            e["type"]
            for e in running.ledger_events()
            if e["type"] in ("turn.released", "turn.failed") and e["tenant"] == "ratelimited"
        ]
        assert closing == ["turn.failed"] * limit + ["turn.released"] * limit + ["turn.failed"]
    finally:
        running.stop()
