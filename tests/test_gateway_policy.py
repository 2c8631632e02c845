"""Policy through the real gateway route, not only the engine (issue 5).

A refused prompt never reaches the upstream (the emulator's request log stays empty), a prompt held
for review does not reach it either, and a broken or missing policy blocks every turn on every
Gemini route.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.genai import errors

from tests.conftest import TEST_POLICY, RunningCustody, start_custody, write_test_policy

MODEL = "gemini-2.5-flash-image"
ROUTES = [
    ("v1beta", "generateContent", ""),
    ("v1", "generateContent", ""),
    ("v1beta", "streamGenerateContent", "?alt=sse"),
    ("v1", "streamGenerateContent", "?alt=sse"),
    ("v1beta", "streamGenerateContent", ""),
]


@pytest.fixture()
def custody_with_test_policy(tmp_path: Path) -> Iterator[RunningCustody]:
    policy_dir = write_test_policy(tmp_path)
    running = start_custody(tmp_path / "custody", policy_dir=policy_dir)
    try:
        yield running
    finally:
        running.stop()


def _post(custody: RunningCustody, version: str, method: str, query: str, prompt: str):
    return httpx.post(
        f"{custody.base_url}/{version}/models/{MODEL}:{method}{query}",
        json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
        headers={"x-goog-api-key": custody.keys["editor"]},
        timeout=60,
    )


def _upstream_requests(custody: RunningCustody) -> list[object]:
    emulator = custody.services.emulator  # type: ignore[attr-defined]
    return httpx.get(emulator.base_url + "/emulator/requests", timeout=10).json()["requests"]


def _clear_upstream(custody: RunningCustody) -> None:
    emulator = custody.services.emulator  # type: ignore[attr-defined]
    httpx.delete(emulator.base_url + "/emulator/requests", timeout=10)


@pytest.mark.parametrize(("version", "method", "query"), ROUTES)
def test_every_gemini_route_enforces_policy(custody_with_test_policy, version, method, query):
    custody = custody_with_test_policy
    _clear_upstream(custody)
    refused = _post(custody, version, method, query, "draw a forbidden-word")
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["status"] == "PERMISSION_DENIED"
    assert "forbidden-word" in refused.json()["error"]["message"]
    held = _post(custody, version, method, query, "this needs-a-human first")
    assert held.status_code == 409, held.text
    assert held.json()["error"]["status"] == "ABORTED"
    assert "review" in held.json()["error"]["message"]
    assert _upstream_requests(custody) == [], "a refused or held prompt reached the upstream"
    allowed = _post(custody, version, method, query, "a red bicycle")
    assert allowed.status_code == 200, allowed.text
    assert len(_upstream_requests(custody)) == 1


def test_refusal_is_recorded_with_the_policy_revision(custody_with_test_policy):
    custody = custody_with_test_policy
    refused = _post(custody, "v1beta", "generateContent", "", "a forbidden-word please")
    events = custody.ledger_events()
    decided = [e for e in events if e["type"] == "policy.decided"]
    assert decided[-1]["body"]["outcome"] == "deny"
    revision = custody.services.policy.bundle_revision  # type: ignore[attr-defined]
    assert decided[-1]["body"]["bundle_revision"] == revision
    assert revision[:12] in refused.json()["error"]["message"]
    assert events[-1]["type"] == "turn.failed"
    assert "a forbidden-word please" not in str(events), "the prompt is masked in the record"


def test_the_sdk_sees_a_refusal_as_a_gemini_client_error(custody_with_test_policy):
    client = custody_with_test_policy.client()
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="a forbidden-word")
    assert caught.value.code == 403


@pytest.mark.parametrize("breakage", ["missing", "syntax", "not-a-decision"])
def test_a_broken_policy_blocks_every_turn(tmp_path: Path, breakage: str) -> None:
    policy_dir = tmp_path / "policies"
    if breakage != "missing":
        policy_dir.mkdir()
        source = {
            "syntax": "package custody\n\ndecision := {{{ this is not rego",
            "not-a-decision": 'package custody\n\ndecision := "allow"\n',
        }[breakage]
        (policy_dir / "custody.rego").write_text(source)
    running = start_custody(tmp_path / "custody", policy_dir=policy_dir)
    try:
        for version, method, query in ROUTES:
            resp = _post(running, version, method, query, "a red bicycle")
            assert resp.status_code == 403, resp.text
            assert "polic" in resp.json()["error"]["message"].lower()
        assert _upstream_requests(running) == []
        decided = [e for e in running.ledger_events() if e["type"] == "policy.decided"]
        assert len(decided) == len(ROUTES)
        assert all(e["body"]["outcome"] == "deny" for e in decided)
    finally:
        running.stop()


def test_policy_file_change_is_hot_reloaded_and_recorded(custody_with_test_policy, tmp_path):
    custody = custody_with_test_policy
    policy = custody.services.policy  # type: ignore[attr-defined]
    before = policy.bundle_revision
    (tmp_path / "policies" / "custody.rego").write_text(
        TEST_POLICY.replace("forbidden-word", "other-word")
    )
    from governance.background import reload_policy

    reload_policy(custody.services)  # the background job does this every policy_reload_ms
    assert policy.bundle_revision != before
    reloaded = [e for e in custody.ledger_events() if e["type"] == "policy.reloaded"]
    assert reloaded and reloaded[-1]["body"]["new_revision"] == policy.bundle_revision
    assert _post(custody, "v1beta", "generateContent", "", "a forbidden-word").status_code == 200


def test_sixteen_concurrent_clients_never_pass_the_rate_limit(tmp_path: Path) -> None:
    """The default policy gives tenant ``ratelimited`` a small per-minute budget."""
    from governance.auth.keys import create_key

    running = start_custody(tmp_path / "custody")
    try:
        key = create_key(
            running.services.engine,  # type: ignore[attr-defined]
            tenant="ratelimited",
            actor="burst@ratelimited",
            roles=["editor"],
        )
        limit = running.services.policy.rate_limit_for("ratelimited")  # type: ignore[attr-defined]

        def call(_: int) -> int:
            return httpx.post(
                f"{running.base_url}/v1beta/models/{MODEL}:generateContent",
                json={"contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}]},
                headers={"x-goog-api-key": key},
                timeout=120,
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(call, range(limit + 16)))
        assert codes.count(200) == limit
        assert codes.count(429) == 16
    finally:
        running.stop()


# --- the default policy in policies/, through the route -------------------------------------


def _post_default(custody: RunningCustody, prompt: str, labels: str = "") -> httpx.Response:
    headers = {"x-goog-api-key": custody.keys["editor"]}
    if labels:
        headers["x-custody-labels"] = labels
    return httpx.post(
        f"{custody.base_url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
        headers=headers,
        timeout=60,
    )


def test_default_policy_refuses_public_figure_likeness_before_the_upstream(custody) -> None:
    _clear_upstream(custody)
    resp = _post_default(custody, "give this man Taylor Swift's face", "consent=obtained")
    assert resp.status_code == 403
    assert resp.json()["error"]["details"][0]["reason"] == "POLICY_DENIED"
    assert _upstream_requests(custody) == []


def test_default_policy_holds_identifiable_people_for_review_before_the_upstream(custody) -> None:
    _clear_upstream(custody)
    resp = _post_default(custody, "make the woman's jacket red", "consent=obtained")
    assert resp.status_code == 409
    assert resp.json()["error"]["details"][0]["reason"] == "HELD_FOR_REVIEW"
    assert _upstream_requests(custody) == []
    types_ = [e["type"] for e in custody.ledger_events()]
    assert "review.requested" in types_ and "upstream.requested" not in types_


def test_default_policy_requires_consent_for_people_at_acme(custody) -> None:
    resp = _post_default(custody, "make the woman's jacket red")
    assert resp.status_code == 403
    assert "consent" in resp.json()["error"]["message"]


def test_production_output_is_held_after_the_upstream_and_not_released(custody) -> None:
    _clear_upstream(custody)
    resp = _post_default(custody, "a red bicycle", "asset=production")
    assert resp.status_code == 409
    assert resp.json()["error"]["details"][0]["reason"] == "HELD_FOR_REVIEW"
    assert len(_upstream_requests(custody)) == 1
    types_ = [e["type"] for e in custody.ledger_events()]
    assert "output.signed" not in types_ and "turn.released" not in types_
