"""Bounded policy cost: a fixed number of interpreters, large inputs on one engine thread.

Large inputs from many threads do not pile up memory per calling thread; ordinary ones do not
compile an interpreter per thread; an input over the engine's limit is refused whole; a caller
waits at most the policy timeout; a reload never closes the engine under a decision still running
on it; text reaches the rules whole (no cut at a NUL).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.policy_memory_bench import large_facts, rss_mib
from governance.policy.bundle import PolicyBundle
from governance.policy.decision import RequestFacts
from governance.policy.engine_regopy import RegopyEngine
from governance.policy.service import PolicyService
from tests.conftest import RunningCustody, start_custody
from tests.test_policy_service import POLICIES, facts

TWO_MB = "make the sofa teal, flatten the fabric " * 51_300
ALLOW = '{"outcome": "allow", "reasons": [], "obligations": {}}'
SLOW_POLICY = f"""package custody

import rego.v1

decision := {ALLOW} if {{
\tcount([x | some x in numbers.range(1, to_number(input.request.labels.n))]) >= 0
\tis_string(object.get(input.request.labels, "note", ""))
}}
"""  # it reads the note: a large one reaches the engine whole (InputProjection)
PROMPT_POLICY = f"""package custody

import rego.v1

default decision := {ALLOW}

decision := {{"outcome": "deny", "reasons": ["watermark"], "obligations": {{}}}} if {{
\tcontains(input.request.prompt, "watermark")
}}
"""


def _engine_threads(
    revision: str, besides: frozenset[threading.Thread] = frozenset()
) -> list[threading.Thread]:
    """The engine threads of policy ``revision`` alive now but those in ``besides`` (threads
    another service with the same policy started before, e.g. in an earlier test)."""
    prefix = f"custody-rego-{revision[:8]}"
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t not in besides]


def _within_budget(reason: str, words: str, budget_ms: int) -> None:
    """``reason`` says ``words`` and a limit within the policy's ``budget_ms``: the engine is
    given what is left of it once the detectors ran (``PolicyService``), so ``budget_ms`` on an
    idle machine and a little less on a loaded one."""
    found = re.search(re.escape(words) + r" (\d+) ms limit", reason)
    assert found is not None, reason
    assert 0 < int(found.group(1)) <= budget_ms, reason


def _threads() -> frozenset[threading.Thread]:
    return frozenset(threading.enumerate())


def _policy(tmp_path: Path, source: str) -> Path:
    root = tmp_path / "policy"
    root.mkdir()
    (root / "custody.rego").write_text(source)
    return root


def _with(**kwargs: Any) -> Callable[[PolicyBundle], RegopyEngine]:
    return lambda bundle: RegopyEngine(bundle, **kwargs)


def _large(n: int) -> RequestFacts:
    """A turn over the engine's inline size on which SLOW_POLICY counts ``n`` numbers."""
    return facts("make the sofa teal", labels={"n": str(n), "note": "x" * 100_000})


def _slow(n: int) -> RequestFacts:
    """A turn on which SLOW_POLICY counts ``n`` numbers (400,000 take about a second)."""
    return facts("make the sofa teal", labels={"n": str(n)})


def test_large_inputs_from_many_threads_do_not_grow_memory() -> None:
    earlier = _threads()
    service = PolicyService(POLICIES)
    turns = [large_facts(i, TWO_MB) for i in range(50)]
    before = rss_mib()

    def decide(i: int) -> tuple[str, str]:
        decision = service.decide_request(turns[i % 50])  # holds a masked copy: not kept
        return decision.outcome, decision.engine

    with ThreadPoolExecutor(max_workers=8) as executor:
        outcomes = set(executor.map(decide, range(200)))
    grown = rss_mib() - before
    assert outcomes == {("allow", "regopy")}
    # Evaluated on the calling threads (one interpreter each, as before) this grew about 130 MB.
    assert grown < 100, f"RSS grew {grown:.0f} MiB over 200 decisions of 2 MB from 8 threads"
    threads = _engine_threads(service.bundle_revision, besides=earlier)
    service.close()
    assert [t.name[-5:] for t in threads] == ["large"]


def test_ordinary_inputs_share_the_configured_interpreters() -> None:
    earlier = _threads()
    service = PolicyService(POLICIES, engine_factory=_with(interpreters=3))
    engine = service._state.engine
    assert isinstance(engine, RegopyEngine)
    with ThreadPoolExecutor(max_workers=16) as executor:
        outcomes = set(
            executor.map(lambda i: service.decide_request(facts("teal")).outcome, range(64))
        )
    assert outcomes == {"allow"}
    assert engine._pool.qsize() == 3  # none compiled per calling thread, all given back
    assert not _engine_threads(service.bundle_revision, earlier)  # no hand-off for ordinary ones
    assert service.decide_request(large_facts(1, TWO_MB)).outcome == "allow"
    (large,) = _engine_threads(service.bundle_revision, earlier)
    service.close()
    large.join(timeout=30)
    assert not large.is_alive()
    closed = service.decide_request(facts("teal"))
    assert closed.outcome == "deny" and "closed" in closed.reasons[0]


def test_an_input_over_the_engine_limit_is_refused_whole() -> None:
    service = PolicyService(POLICIES, engine_factory=_with(max_input_bytes=100_000))
    refused = service.decide_request(large_facts(1, "x" * 200_000))
    assert refused.outcome == "deny" and refused.engine == "error"
    assert "over the engine's limit of 100,000" in refused.reasons[0]
    assert refused.obligations == {"engine_error": True}
    assert service.decide_request(large_facts(1, "x" * 50_000)).outcome == "allow"


def test_a_caller_waits_at_most_the_policy_timeout(tmp_path: Path) -> None:
    root = _policy(tmp_path, SLOW_POLICY)
    service = PolicyService(root, engine_factory=_with(interpreters=1), timeout_ms=20)
    running = service.decide_request(_large(400_000))  # the large-input thread works on it
    queued = service.decide_request(_large(10))  # behind it
    assert running.outcome == "deny" and queued.outcome == "deny"
    _within_budget(running.reasons[0], "did not finish within the", 20)
    _within_budget(queued.reasons[0], "did not start within the", 20)
    inline = service.decide_request(_slow(400_000))  # on this thread: judged after the fact
    assert inline.outcome == "deny" and "over the 20 ms limit" in inline.reasons[0]
    patient = PolicyService(root, engine_factory=_with(interpreters=1), timeout_ms=60_000)
    assert patient.decide_request(_large(10)).outcome == "allow"
    assert patient.decide_request(_slow(10)).outcome == "allow"


def test_a_caller_waits_at_most_the_policy_timeout_for_an_interpreter(tmp_path: Path) -> None:
    service = PolicyService(
        _policy(tmp_path, SLOW_POLICY), engine_factory=_with(interpreters=1), timeout_ms=20
    )
    busy = threading.Thread(target=service.decide_request, args=(_slow(400_000),))
    busy.start()
    engine = service._state.engine
    assert isinstance(engine, RegopyEngine)
    while engine._pool.qsize():  # until the only interpreter is lent out
        threading.Event().wait(0.002)
    waiting = service.decide_request(_slow(10))
    busy.join(timeout=120)
    assert waiting.outcome == "deny"
    _within_budget(waiting.reasons[0], "no policy interpreter became free within the", 20)


def test_a_reload_closes_the_old_engine_only_after_its_last_decision(tmp_path: Path) -> None:
    root = _policy(tmp_path, SLOW_POLICY)
    service = PolicyService(root, timeout_ms=60_000)
    old, old_engine = service.bundle_revision, service._state.engine
    assert isinstance(old_engine, RegopyEngine)
    result: list[object] = []
    started = threading.Thread(target=lambda: result.append(service.decide_request(_slow(300_000))))
    started.start()
    while not service._in_use:  # the decision holds the old revision
        threading.Event().wait(0.002)
    (root / "custody.rego").write_text(SLOW_POLICY + "\nextra := 1\n")
    body = service.reload_if_changed()
    assert body is not None and body["old_revision"] == old
    assert old_engine._finalizer.alive, "closed under a running decision"
    started.join(timeout=120)
    (decision,) = result
    assert decision.outcome == "allow" and decision.bundle_revision == old  # type: ignore[attr-defined]
    assert not old_engine._finalizer.alive and old_engine._pool.qsize() == 0
    assert service.decide_request(_slow(10)).bundle_revision == body["new_revision"]


def test_text_reaches_the_rules_whole(tmp_path: Path) -> None:
    service = PolicyService(_policy(tmp_path, PROMPT_POLICY))
    decision = service.decide_request(facts("remove\x00 the watermark"))  # regopy cut at the NUL
    assert (decision.outcome, decision.reasons) == ("deny", ("watermark",))
    not_text = service.decide_request(facts("remove \ud800 the watermark"))  # a lone surrogate
    assert not_text.outcome == "deny" and "not JSON" in not_text.reasons[0]
    assert "unrecordable" in not_text.record()["input"]


def test_the_gateway_decides_with_its_configured_interpreters(tmp_path: Path) -> None:
    custody: RunningCustody = start_custody(tmp_path / "custody", policy_interpreters=3)
    try:
        client = custody.client()

        def edit(i: int) -> int:
            response = client.models.generate_content(  # type: ignore[attr-defined]
                model="gemini-2.5-flash-image", contents=f"a teal sofa, take {i}"
            )
            return len(response.candidates)

        with ThreadPoolExecutor(max_workers=8) as executor:
            assert all(executor.map(edit, range(16)))
        engine = custody.services.policy._state.engine  # type: ignore[attr-defined]
        assert engine.interpreters == 3 and engine._pool.qsize() == 3
        decided = [e for e in custody.ledger_events() if e.get("type") == "policy.decided"]
        assert len(decided) >= 16
        assert {e["body"]["engine"] for e in decided} == {"regopy"}  # type: ignore[index]
    finally:
        import asyncio

        custody.server.stop()  # type: ignore[attr-defined]
        asyncio.run(custody.services.aclose())  # type: ignore[attr-defined]


def test_the_classifier_spends_the_policy_time_budget_too(tmp_path: Path) -> None:
    """The detectors' time counts toward the policy timeout: a prompt whose classification
    alone outlasts it is denied without evaluating, recorded as such, and never forwarded. (A
    190,000-character prompt takes the shipped classifier hundreds of milliseconds; the limit
    here is 5 ms, so the outcome does not depend on this machine's speed.)"""
    import httpx

    custody = start_custody(tmp_path / "custody", policy_timeout_ms=5)
    try:
        emulator = custody.services.emulator.base_url  # type: ignore[attr-defined]
        httpx.delete(emulator + "/emulator/requests", timeout=10)
        prompt = "make the sofa teal and the cushions a little warmer " * 3_700
        resp = httpx.post(
            f"{custody.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
            headers={"x-goog-api-key": custody.keys["editor"]},
            timeout=120,
        )
        assert resp.status_code == 403, resp.text
        error = resp.json()["error"]
        assert error["details"][0]["reason"] == "POLICY_DENIED"
        assert "the detectors took" in error["message"] and "5 ms limit" in error["message"]
        turn = resp.headers["x-custody-turn"]
        (decided,) = [e for e in custody.ledger_events(turn) if e["type"] == "policy.decided"]
        assert decided["body"]["outcome"] == "deny"  # type: ignore[index]
        assert decided["body"]["signals"]["watermark_removal"]["matched"] is False  # type: ignore[index]
        assert httpx.get(emulator + "/emulator/requests", timeout=10).json()["requests"] == []
    finally:
        custody.stop()
