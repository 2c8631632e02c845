"""Errors an SDK user can trace, and refusals that are recorded (issues 13 and 14).

Through the real server and the real google-genai SDK: every error of a turn names the turn
(``x-custody-turn`` and ErrorInfo ``metadata.turn_id``); a held turn (409 ``ABORTED``) is told
apart from a denied one (403 ``PERMISSION_DENIED``) and is not retried by the SDK; routes Custody
does not serve answer in Gemini's envelope and say what is served; every refusal of an
authenticated caller on a model route is a ``request.refused`` event (SQLite and PostgreSQL);
nothing leaks exception reprs or pydantic internals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors, types

from governance.sessions.lineage import keyed_session_id
from storage.ledger.verify import verify_ledger
from tests.conftest import TEST_POLICY, RunningCustody, start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"
GENERATE = f"/v1beta/models/{MODEL}:generateContent"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
LABEL_RULE = """
decision := {"outcome": "deny", "reasons": ["label block=yes"], "obligations": {}} if {
  input.request.labels.block == "yes"
}
"""


def _start(tmp_path: Path, database_url: str = "", **overrides: object) -> RunningCustody:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "custody.rego").write_text(TEST_POLICY + LABEL_RULE)
    return start_custody(tmp_path / "custody", database_url, policy_dir=policy_dir, **overrides)


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator[RunningCustody]:
    running = _start(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def small_gateway(tmp_path: Path, db_url: str) -> Iterator[RunningCustody]:
    """A gateway accepting bodies of at most 4 KiB, on SQLite and on PostgreSQL."""
    running = _start(tmp_path, db_url, max_request_bytes=4096)
    try:
        yield running
    finally:
        running.stop()


def _custody_info(details: list[dict[str, object]]) -> dict[str, object]:
    infos = [d for d in details if d.get("@type") == ERROR_INFO and d.get("domain") == "custody"]
    assert len(infos) == 1, details
    return infos[0]


def _text(prompt: str) -> dict[str, object]:
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}


# --- x-custody-turn on errors; held is not denied -----------------------------------------------


def test_sdk_user_reads_the_turn_id_of_a_denied_turn(gateway) -> None:
    with pytest.raises(errors.ClientError) as caught:
        gateway.client().models.generate_content(model=MODEL, contents="a forbidden-word")
    err = caught.value
    assert err.code == 403 and err.status == "PERMISSION_DENIED"
    turn_id = err.response.headers["x-custody-turn"]
    info = _custody_info(err.details["error"]["details"])
    assert info["reason"] == "POLICY_DENIED"
    assert info["metadata"]["turn_id"] == turn_id  # type: ignore[index]
    events = gateway.ledger_events(turn_id)
    assert [e["type"] for e in events] == ["turn.received", "policy.decided", "turn.failed"]
    assert info["metadata"]["decision_id"] == events[1]["body"]["decision_id"]  # type: ignore[index]


def test_held_turn_is_409_aborted_names_the_turn_and_is_not_retried(gateway) -> None:
    retrying = genai.Client(
        api_key=gateway.keys["editor"],
        http_options=types.HttpOptions(
            base_url=gateway.base_url, retry_options=types.HttpRetryOptions(attempts=3)
        ),
    )
    with pytest.raises(errors.ClientError) as caught:
        retrying.models.generate_content(model=MODEL, contents="this needs-a-human first")
    err = caught.value
    assert err.code == 409 and err.status == "ABORTED"
    turn_id = err.response.headers["x-custody-turn"]
    assert _custody_info(err.details["error"]["details"])["reason"] == "HELD_FOR_REVIEW"
    types_ = [e["type"] for e in gateway.ledger_events(turn_id)]
    task = next(e for e in gateway.ledger_events(turn_id) if e["type"] == "review.opened")
    task_id = task["body"]["task"]
    assert f"Turn {turn_id}, review task {task_id}" in err.message
    assert f"/console/reviews/{task_id}" in err.message
    assert "Once it is approved, send the same request again" in err.message
    assert "review.requested" in types_ and "upstream.requested" not in types_
    held_turns = {e["turn"] for e in gateway.ledger_events() if e["type"] == "review.requested"}
    assert held_turns == {turn_id}, "the SDK's retry options resent a held turn"


def test_upstream_error_keeps_its_details_and_gains_the_turn_id(gateway) -> None:
    resp = httpx.post(
        gateway.base_url + GENERATE,
        json=_text("a red bicycle"),
        headers={"x-goog-api-key": gateway.keys["editor"], "x-emulator-fault": "400"},
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    turn_id = resp.headers["x-custody-turn"]
    info = _custody_info(resp.json()["error"]["details"])
    assert info["metadata"] == {"turn_id": turn_id}
    assert gateway.ledger_events(turn_id)[-1]["type"] == "turn.failed"


def test_denials_and_holds_are_logged_with_turn_decision_and_reasons(gateway, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="custody")
    client = gateway.client()
    for prompt in ("a secret forbidden-word prompt", "a secret needs-a-human prompt"):
        with pytest.raises(errors.ClientError):
            client.models.generate_content(model=MODEL, contents=prompt)
    records = [r.getMessage() for r in caplog.records if r.name == "custody"]
    decided = [e for e in gateway.ledger_events() if e["type"] == "policy.decided"]
    assert len(decided) == 2
    for event, word in zip(decided, ("denied", "held for review"), strict=True):
        line = next(r for r in records if event["turn"] in r)
        assert word in line and "tenant=acme" in line and "actor=editor@acme" in line
        assert event["body"]["decision_id"] in line and "the test policy" in line
    assert not any("secret" in r for r in records), "prompt text reached the log"


def test_an_internal_failure_names_the_turn_and_leaks_nothing(gateway, monkeypatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("internal-detail-xyz")

    monkeypatch.setattr(gateway.services.policy, "decide_request", broken)  # type: ignore[attr-defined]
    resp = httpx.post(
        gateway.base_url + GENERATE,
        json=_text("a red bicycle"),
        headers={"x-goog-api-key": gateway.keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 500
    turn_id = resp.headers["x-custody-turn"]
    message = resp.json()["error"]["message"]
    assert turn_id in message and "server log" in message
    assert "internal-detail-xyz" not in resp.text and "RuntimeError" not in resp.text
    assert gateway.ledger_events(turn_id)[-1]["type"] == "turn.failed"


def test_a_response_that_cannot_be_built_is_never_recorded_as_released(
    gateway, monkeypatch
) -> None:
    """The signed documents are built beside the closing append, which waits for them: when
    building fails the caller gets a 500 naming the turn, and the turn's record ends in
    ``turn.failed`` with no ``turn.released`` (its outputs were signed, never sent), and the
    ledger still verifies."""
    from governance.pipeline import release

    def broken(*_: object) -> None:
        raise RuntimeError("outgoing-detail-xyz")

    monkeypatch.setattr(release, "outgoing", broken)
    resp = httpx.post(
        gateway.base_url + GENERATE,
        json=_text("a red bicycle"),
        headers={"x-goog-api-key": gateway.keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 500, resp.text
    turn_id = resp.headers["x-custody-turn"]
    assert "outgoing-detail-xyz" not in resp.text
    types_ = [e["type"] for e in gateway.ledger_events(turn_id)]
    assert "output.signed" in types_ and "turn.released" not in types_, types_
    assert types_[-1] == "turn.failed", types_
    ledger = gateway.services.ledger  # type: ignore[attr-defined]
    ledger.issue_checkpoint()
    report = verify_ledger(ledger.engine, origin=ledger.origin, verifier=ledger.signer.verifier())
    assert report.ok, report.summary()


def test_an_unexpected_error_outside_a_turn_is_a_gemini_envelope(gateway, monkeypatch) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("internal-detail-xyz")

    monkeypatch.setattr(gateway.services.upstream, "get_resource", broken)  # type: ignore[attr-defined]
    resp = httpx.get(
        gateway.base_url + "/v1beta/models", headers={"x-goog-api-key": gateway.keys["editor"]}
    )
    assert resp.status_code == 500
    assert resp.json()["error"]["status"] == "INTERNAL"
    assert "internal-detail-xyz" not in resp.text


def test_validation_errors_are_human_not_pydantic_internals(gateway) -> None:
    resp = httpx.get(
        gateway.base_url + "/api/v1/ledger/entries?start=abc",
        headers={"x-goog-api-key": gateway.keys["auditor"]},
    )
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert "'start'" in message and "integer" in message
    for internal in ("int_parsing", "'loc'", "'input'", "'type'", "errors.pydantic"):
        assert internal not in resp.text


# --- what is not served ------------------------------------------------------------------------

UNSERVED = [
    ("POST", f"/v1beta/models/{MODEL}:embedContent"),
    ("POST", f"/v1/models/{MODEL}:batchGenerateContent"),
    ("POST", "/v1beta/files"),
    ("GET", "/v1beta/files"),
    ("POST", "/upload/v1beta/files"),
    ("POST", f"/v1beta1/projects/p/locations/l/publishers/google/models/{MODEL}:generateContent"),
    ("POST", f"/v2/models/{MODEL}:generateContent"),
]


@pytest.mark.parametrize(("method", "path"), UNSERVED)
def test_unserved_routes_answer_a_gemini_404_saying_what_is_served(gateway, method, path) -> None:
    resp = httpx.request(
        method,
        gateway.base_url + path,
        json=_text("hi"),
        headers={"x-goog-api-key": gateway.keys["editor"]},
    )
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert error["status"] == "NOT_FOUND"
    for served in (":generateContent", ":streamGenerateContent", ":countTokens", "/api/v1/"):
        assert served in error["message"]
    assert "Files API" in error["message"] and "Vertex" in error["message"]


def test_sdk_embed_content_is_a_404_client_error(gateway) -> None:
    with pytest.raises(errors.ClientError) as caught:
        gateway.client().models.embed_content(model=MODEL, contents="hello")
    assert caught.value.code == 404 and "not served" in caught.value.message


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", GENERATE), ("DELETE", "/v1beta/models"), ("GET", GENERATE)],
)
def test_wrong_method_is_405_in_the_envelope(gateway, method, path) -> None:
    resp = httpx.request(
        method, gateway.base_url + path, headers={"x-goog-api-key": gateway.keys["editor"]}
    )
    assert resp.status_code == 405, resp.text
    assert resp.json()["error"]["code"] == 405
    assert "serves" in resp.json()["error"]["message"]


# --- every refusal on a model route is recorded ------------------------------------------------

REFUSALS = [
    # (what, method, path, extra headers, body, status, reason)
    ("too large", "POST", GENERATE, {}, b"x" * 5000, 413, "PAYLOAD_TOO_LARGE"),
    ("unknown method", "POST", f"/v1beta/models/{MODEL}:embedContent", {}, b"{}", 404,
     "NOT_SERVED"),
    ("wrong verb", "PUT", GENERATE, {}, b"{}", 405, "METHOD_NOT_SERVED"),
    ("no route", "POST", "/v1beta/models/a/b:generateContent", {}, b"{}", 404, "NOT_SERVED"),
    ("control char", "POST", "/v1beta/models/gemini%00x:generateContent", {}, b"{}", 400,
     "MODEL_NAME_INVALID"),
    ("space", "POST", "/v1beta/models/Gemini Flash:generateContent", {}, b"{}", 400,
     "MODEL_NAME_INVALID"),
    ("huge session", "POST", GENERATE, {"x-custody-session": "s" * 70_000}, b"{}", 400,
     "SESSION_HEADER_INVALID"),
    ("session chars", "POST", GENERATE, {"x-custody-session": "a b\tc"}, b"{}", 400,
     "SESSION_HEADER_INVALID"),
    ("labels no =", "POST", GENERATE, {"x-custody-labels": "asset"}, b"{}", 400,
     "LABELS_HEADER_INVALID"),
    ("labels long", "POST", GENERATE, {"x-custody-labels": "a=" + "b" * 3000}, b"{}", 400,
     "LABELS_HEADER_INVALID"),
    ("count too large", "POST", f"/v1/models/{MODEL}:countTokens", {}, b"x" * 5000, 413,
     "PAYLOAD_TOO_LARGE"),
    ("count bad json", "POST", f"/v1/models/{MODEL}:countTokens", {}, b"{nope", 400,
     "INVALID_JSON"),
    ("get bad model", "GET", "/v1beta/models/gemini%01x", {}, b"", 400, "MODEL_NAME_INVALID"),
]  # fmt: skip


def test_every_refusal_of_an_authenticated_caller_is_recorded(small_gateway) -> None:
    gateway = small_gateway
    key = {"x-goog-api-key": gateway.keys["editor"]}
    with httpx.Client(base_url=gateway.base_url, timeout=60) as http:
        for what, method, path, headers, body, status, reason in REFUSALS:
            resp = http.request(method, path, content=body, headers={**key, **headers})
            assert resp.status_code == status, (what, resp.text)
            error = resp.json()["error"]
            turn_id = resp.headers["x-custody-turn"]
            assert _custody_info(error["details"])["metadata"]["turn_id"] == turn_id, what  # type: ignore[index]
            events = gateway.ledger_events(turn_id)
            assert [e["type"] for e in events] == ["request.refused"], what
            assert events[0]["body"]["code"] == status and events[0]["body"]["reason"] == reason
            assert events[0]["tenant"] == "acme" and events[0]["actor"] == "editor@acme"
    services = gateway.services
    report = verify_ledger(
        services.engine,  # type: ignore[attr-defined]
        origin=services.ledger.origin,  # type: ignore[attr-defined]
        verifier=services.ledger.signer.verifier(),  # type: ignore[attr-defined]
    )
    assert report.ok, report.first_fault()
    assert report.entries == len(REFUSALS)


def test_refusals_of_unknown_callers_are_answered_but_not_recorded(small_gateway) -> None:
    with httpx.Client(base_url=small_gateway.base_url, timeout=60) as http:
        assert http.post(f"/v1beta/models/{MODEL}:embedContent").status_code == 401
        assert http.put(GENERATE, headers={"x-goog-api-key": "ck_nope_x"}).status_code == 405
        assert http.post("/v1beta/files").status_code == 404
        resp = http.post(GENERATE, content=b"x" * 5000, headers={"x-goog-api-key": "ck_no_x"})
        assert resp.status_code == 403
    assert small_gateway.ledger_events() == []


# --- sending Custody's headers from the SDK (for the README) ---------------------------------


def test_sdk_sends_session_and_labels_per_client_and_per_call(gateway) -> None:
    per_client = genai.Client(
        api_key=gateway.keys["editor"],
        http_options=types.HttpOptions(
            base_url=gateway.base_url,
            headers={"x-custody-session": "s-client", "x-custody-labels": "asset=draft"},
        ),
    )
    response = per_client.models.generate_content(model=MODEL, contents="a red bicycle")
    turn_id = response.sdk_http_response.headers["x-custody-turn"]
    # The header names the caller's session: every event names that one session.
    s_client = keyed_session_id("acme", "editor@acme", "s-client")
    assert {e["session"] for e in gateway.ledger_events(turn_id)} == {s_client}

    call = types.GenerateContentConfig(
        http_options=types.HttpOptions(
            headers={"x-custody-session": "s-call", "x-custody-labels": "block=yes"}
        )
    )
    with pytest.raises(errors.ClientError) as caught:
        gateway.client().models.generate_content(model=MODEL, contents="a cat", config=call)
    assert "label block=yes" in caught.value.message, "the per-call labels reached the policy"
    events = gateway.ledger_events(caught.value.response.headers["x-custody-turn"])
    assert {e["session"] for e in events} == {keyed_session_id("acme", "editor@acme", "s-call")}
