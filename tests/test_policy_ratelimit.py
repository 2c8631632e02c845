"""Rate limits hold under concurrency: check-and-reserve is atomic, denials give places back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from governance.policy.ratelimit import RateLimiter, Window
from governance.policy.service import PolicyService
from tests.test_policy_service import POLICIES, facts


def test_sixteen_threads_get_exactly_the_limit() -> None:
    service = PolicyService(POLICIES)
    limit = service.rate_limit_for("ratelimited")
    assert limit == 5
    barrier = threading.Barrier(16)

    def turn(i: int) -> str:
        barrier.wait()  # all 16 start at once
        return service.decide_request(facts("a red bicycle", tenant="ratelimited")).outcome

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(turn, range(16)))
    assert outcomes.count("allow") == limit
    assert outcomes.count("deny") == 16 - limit


def test_tenant_limit_spans_actors() -> None:
    service = PolicyService(POLICIES)  # ratelimited: 5 per actor, 8 per tenant per minute
    outcomes = [
        service.decide_request(facts("sofa", tenant="ratelimited", actor=f"a{i % 4}")).outcome
        for i in range(12)
    ]
    assert outcomes.count("allow") == 8


def test_denied_turns_release_their_reservation() -> None:
    service = PolicyService(POLICIES)
    for _ in range(3):  # denied by policy: they must not use the budget
        assert (
            service.decide_request(facts("remove the watermark", tenant="ratelimited")).outcome
            == "deny"
        )
    allowed = [service.decide_request(facts("sofa", tenant="ratelimited")) for _ in range(6)]
    assert [d.outcome for d in allowed].count("allow") == 5
    assert service.release_reservation(allowed[0].decision_id) is True
    assert service.release_reservation(allowed[0].decision_id) is False
    assert service.decide_request(facts("sofa", tenant="ratelimited")).outcome == "allow"


def test_window_slides() -> None:
    now = [1000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    window = (Window("per_minute", 60),)
    for _ in range(3):
        limiter.reserve("t", "a", 2, window)
    assert limiter.peek("t", "a", window)["per_minute"]["actor_images"] == 6
    now[0] += 61
    assert limiter.peek("t", "a", window)["per_minute"]["actor_turns"] == 0


def test_a_settled_turn_keeps_its_place_and_leaves_no_reservation_behind() -> None:
    service = PolicyService(POLICIES)  # ratelimited: 5 per actor per minute
    allowed = [service.decide_request(facts("sofa", tenant="ratelimited")) for _ in range(5)]
    assert [d.outcome for d in allowed] == ["allow"] * 5
    for decision in allowed:  # each turn ended released (or held): it keeps its place
        service.settle_reservation(decision.decision_id)
        service.settle_reservation(decision.decision_id)  # idempotent
    assert service.release_reservation(allowed[0].decision_id) is False, "nothing to give back"
    assert service.decide_request(facts("sofa", tenant="ratelimited")).outcome == "deny"
    # Nothing per turn is kept once the turns are over (a bound, not a time).
    assert not service._reservations
    assert not service.limiter._reservations  # type: ignore[attr-defined]


def test_a_given_back_turn_is_settled_without_effect() -> None:
    service = PolicyService(POLICIES)
    decision = service.decide_request(facts("sofa", tenant="ratelimited"))
    assert service.release_reservation(decision.decision_id) is True
    service.settle_reservation(decision.decision_id)  # what every turn's end does
    allowed = [service.decide_request(facts("sofa", tenant="ratelimited")) for _ in range(6)]
    assert [d.outcome for d in allowed].count("allow") == 5
