"""Rate limits are global: counted in the database, shared by replicas, kept across restarts.

On SQLite and PostgreSQL: limiters on separate engines (as separate replicas are) admit exactly
L of many concurrent reservations against a limit L; a new limiter (a restarted process) sees
the counts; a window that is over starts afresh and a late give-back never touches the next
window. Then two real gateways on one database, driven over HTTP: a limit of N turns per minute
admits exactly N across both, and a restarted replica grants no fresh budget."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from governance.policy.ratelimit import DatabaseRateLimiter, Window
from storage.db import make_engine, migrate
from tests.conftest import start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MINUTE = (Window("per_minute", 60),)
REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_limiters_on_separate_engines_admit_exactly_the_limit(db_url: str) -> None:
    migrate(db_url)
    replicas = [DatabaseRateLimiter(make_engine(db_url)) for _ in range(2)]
    limit, attempts = 7, 40

    def reserve(i: int) -> int:
        reservation = replicas[i % 2].reserve("acme", "a@acme", 1, MINUTE)
        return int(reservation.counters["per_minute"]["actor_turns"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(reserve, range(attempts)))
    assert sorted(counts) == list(range(1, attempts + 1)), "every count seen exactly once"
    assert sum(1 for c in counts if c <= limit) == limit
    peeked = replicas[0].peek("acme", "a@acme", MINUTE)["per_minute"]
    assert peeked["actor_turns"] == attempts and peeked["tenant_turns"] == attempts
    assert peeked["actor_images"] == attempts


def test_a_forgotten_reservation_keeps_its_place_and_is_not_held(db_url: str) -> None:
    migrate(db_url)
    limiter = DatabaseRateLimiter(make_engine(db_url))
    held = [limiter.reserve("acme", "a@acme", 1, MINUTE) for _ in range(3)]
    for reservation in held:  # the turns ended released: nothing will give them back
        limiter.forget(reservation.reservation_id)
    assert limiter.release(held[0].reservation_id) is False
    assert limiter.peek("acme", "a@acme", MINUTE)["per_minute"]["actor_turns"] == 3
    assert not limiter._held, "one entry per turn would stay until 100,000 later turns"


def test_a_restart_sees_the_counts_and_a_give_back_returns_one_place(db_url: str) -> None:
    migrate(db_url)
    first = DatabaseRateLimiter(make_engine(db_url))
    held = [first.reserve("acme", "a@acme", 2, MINUTE) for _ in range(3)]
    assert first.release(held[-1].reservation_id) is True
    assert first.release(held[-1].reservation_id) is False, "idempotent"
    restarted = DatabaseRateLimiter(make_engine(db_url))
    after = restarted.reserve("acme", "a@acme", 2, MINUTE).counters["per_minute"]
    assert after["actor_turns"] == 3 and after["actor_images"] == 6
    other_actor = restarted.reserve("acme", "b@acme", 0, MINUTE).counters["per_minute"]
    assert other_actor["actor_turns"] == 1 and other_actor["tenant_turns"] == 4


def test_a_new_window_starts_afresh_and_a_late_give_back_leaves_it_alone(db_url: str) -> None:
    migrate(db_url)
    clock = Clock()
    limiter = DatabaseRateLimiter(make_engine(db_url), clock=clock)
    old = limiter.reserve("acme", "a@acme", 1, MINUTE)
    limiter.reserve("acme", "a@acme", 1, MINUTE)
    clock.now += 61
    fresh = limiter.reserve("acme", "a@acme", 1, MINUTE)
    assert fresh.counters["per_minute"]["actor_turns"] == 1
    assert limiter.release(old.reservation_id) is True
    assert limiter.peek("acme", "a@acme", MINUTE)["per_minute"]["actor_turns"] == 1
    clock.now += 61
    assert limiter.peek("acme", "a@acme", MINUTE)["per_minute"]["actor_turns"] == 0


def _policy_with_turn_limit(tmp_path: Path, turns: int) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, target)
    tenants = target / "custody" / "tenants" / "data.json"
    data = json.loads(tenants.read_text())
    data["acme"]["require_consent_for_people"] = False
    data["acme"]["rate_limits"] = {"per_minute": {"window_s": 60, "actor_turns": turns}}
    tenants.write_text(json.dumps(data))
    return target


def _turn(base_url: str, key: str) -> int:
    return httpx.post(
        f"{base_url}/v1beta/models/gemini-2.5-flash-image:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}]},
        headers={"x-goog-api-key": key},
        timeout=120,
    ).status_code


def test_two_replicas_admit_exactly_n_per_minute_and_a_restart_grants_nothing(
    db_url: str, tmp_path: Path
) -> None:
    limit = 6
    policies = _policy_with_turn_limit(tmp_path, limit)
    a = start_custody(tmp_path / "a", db_url, policy_dir=policies)
    b = start_custody(
        tmp_path / "b", db_url, policy_dir=policies, log_key_file=tmp_path / "a" / "ledger-note.key"
    )
    running = [a, b]
    try:
        key = a.keys["editor"]  # one actor, editor@acme, whichever replica answers
        jobs = [(a.base_url if i % 2 else b.base_url, key) for i in range(limit * 3)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda job: _turn(*job), jobs))
        assert codes.count(200) == limit and codes.count(429) == len(jobs) - limit, codes
        b.stop()
        running = [a]
        restarted = start_custody(
            tmp_path / "b2",
            db_url,
            policy_dir=policies,
            log_key_file=tmp_path / "a" / "ledger-note.key",
        )
        running.append(restarted)
        assert _turn(restarted.base_url, key) == 429, "a restart grants no fresh budget"
        assert _turn(restarted.base_url, restarted.keys["editor"]) == 429, "same actor"
    finally:
        for r in running:
            r.stop()


def test_a_count_commits_without_its_own_log_flush_and_the_ledger_still_flushes(
    db_url: str,
) -> None:
    # A count's next step is always a ledger append of its turn, which flushes the log past it
    # (storage/rate_counters.py): the count's commit does not wait for a flush of its own.
    migrate(db_url)
    counters = make_engine(db_url, flush_on_commit=False)
    ledger_side = make_engine(db_url)
    seen: list[str] = []

    @event.listens_for(counters, "before_cursor_execute")
    def _statement(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement.strip().split()[0].upper() + " " + statement[:60])

    limiter = DatabaseRateLimiter(counters)
    reservation = limiter.reserve("acme", "a@acme", 1, MINUTE)
    assert limiter.release(reservation.reservation_id)
    if counters.dialect.name == "sqlite":
        with counters.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        with ledger_side.connect() as other:
            assert other.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    else:
        sets = [s for s in seen if "synchronous_commit" in s]
        assert len(sets) == 2, seen  # the reservation's and the give-back's transactions
        with ledger_side.connect() as other:
            assert other.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    counters.dispose()
    ledger_side.dispose()
