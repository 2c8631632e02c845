"""models.list, models.get and countTokens through Custody, with the real google-genai SDK.

Each call is authenticated, forwarded with Custody's upstream key (never the caller's), answered
in Gemini's wire format and recorded in the ledger before the answer is sent; countTokens is
policy-checked like a turn (a deny is refused and never reaches the upstream; a review counts).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from google import genai
from google.genai import errors, types
from PIL import Image

from governance.upstream.embedded import ThreadedServer
from tests.conftest import RunningCustody, start_custody, write_test_policy

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image-preview"


@pytest.fixture()
def gateway(tmp_path: Path, db_url: str) -> Iterator[RunningCustody]:
    """Custody over the built-in emulator with a test policy, on SQLite and on PostgreSQL."""
    policy_dir = write_test_policy(tmp_path)
    running = start_custody(tmp_path / "custody", db_url, policy_dir=policy_dir)
    try:
        yield running
    finally:
        running.stop()


def _upstream_log(custody: RunningCustody) -> list[dict[str, object]]:
    emulator = custody.services.emulator  # type: ignore[attr-defined]
    return httpx.get(emulator.base_url + "/emulator/requests", timeout=10).json()["requests"]  # type: ignore[no-any-return]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def _turn_of(exc: errors.APIError) -> str:
    return exc.response.headers["x-custody-turn"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("api_version", ["v1", "v1beta"])
def test_sdk_lists_models_page_by_page_and_each_page_is_recorded(gateway, api_version) -> None:
    client = gateway.client(api_version=api_version)
    names = [m.name for m in client.models.list(config={"page_size": 1})]
    assert names == [f"models/{FLASH}", f"models/{PRO}"]
    listed = [e for e in gateway.ledger_events() if e["type"] == "models.listed"]
    assert [e["body"]["page_token"] for e in listed] == [False, True]
    assert [e["body"]["next_page"] for e in listed] == [True, False]
    assert all(e["body"]["status"] == 200 and e["body"]["models"] == 1 for e in listed)
    assert all(e["tenant"] == "acme" and e["actor"] == "editor@acme" for e in listed)


def test_sdk_gets_a_model_and_an_unknown_one_is_the_upstreams_404(gateway) -> None:
    client = gateway.client()
    model = client.models.get(model=FLASH)
    assert model.name == f"models/{FLASH}"
    assert "countTokens" in (model.supported_actions or [])
    with pytest.raises(errors.ClientError) as caught:
        client.models.get(model="gemini-0-does-not-exist")
    assert caught.value.code == 404
    fetched = [e for e in gateway.ledger_events() if e["type"] == "models.fetched"]
    assert [(e["body"]["model"], e["body"]["status"]) for e in fetched] == [
        (FLASH, 200),
        ("gemini-0-does-not-exist", 404),
    ]
    assert fetched[1]["turn"] == _turn_of(caught.value)


def test_sdk_counts_tokens_of_text_and_image_with_a_recorded_commitment(gateway) -> None:
    client = gateway.client()
    prompt = "make the sofa teal, please"  # 26 characters: 7 emulator tokens
    image = types.Part.from_bytes(data=_png(), mime_type="image/png")
    counted = client.models.count_tokens(model=FLASH, contents=[prompt, image])
    assert counted.total_tokens == 7 + 258
    record_id = counted.sdk_http_response.headers["x-custody-turn"]
    events = gateway.ledger_events(record_id)
    assert [e["type"] for e in events] == ["policy.decided", "tokens.counted"]
    body = events[1]["body"]
    assert body["total_tokens"] == 265 and body["status"] == 200 and body["outcome"] == "allow"
    assert prompt not in str(events), "content stays out of the leaves"
    sent = gateway.services.content.commitments.open(body["request"])  # type: ignore[attr-defined]
    assert sent is not None and prompt in sent.decode()
    assert len(sent) == body["request_bytes"]


def test_count_tokens_is_policy_checked_a_deny_never_reaches_the_upstream(gateway) -> None:
    httpx.delete(gateway.services.emulator.base_url + "/emulator/requests", timeout=10)  # type: ignore[attr-defined]
    client = gateway.client()
    with pytest.raises(errors.ClientError) as caught:
        client.models.count_tokens(model=FLASH, contents="draw a forbidden-word")
    assert caught.value.code == 403 and caught.value.status == "PERMISSION_DENIED"
    assert "forbidden-word" in caught.value.message
    assert _upstream_log(gateway) == []
    events = gateway.ledger_events(_turn_of(caught.value))
    assert [e["type"] for e in events] == ["policy.decided", "request.refused"]
    assert events[0]["body"]["outcome"] == "deny"
    assert events[1]["body"]["reason"] == "POLICY_DENIED"


def test_count_tokens_of_a_request_held_for_review_still_counts(gateway) -> None:
    counted = gateway.client().models.count_tokens(model=FLASH, contents="needs-a-human here")
    assert counted.total_tokens == 5
    events = gateway.ledger_events(counted.sdk_http_response.headers["x-custody-turn"])
    assert events[0]["body"]["outcome"] == "review"
    assert events[1]["type"] == "tokens.counted" and events[1]["body"]["outcome"] == "review"


def test_count_tokens_in_generate_content_request_form_is_checked_too(gateway) -> None:
    inner = {"model": f"models/{FLASH}", "contents": [{"parts": [{"text": "a forbidden-word"}]}]}
    resp = httpx.post(
        f"{gateway.base_url}/v1beta/models/{FLASH}:countTokens",
        json={"generateContentRequest": inner},
        headers={"x-goog-api-key": gateway.keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 403, resp.text
    allowed = httpx.post(
        f"{gateway.base_url}/v1beta/models/{FLASH}:countTokens",
        json={"generateContentRequest": {**inner, "contents": [{"parts": [{"text": "abcd"}]}]}},
        headers={"x-goog-api-key": gateway.keys["editor"]},
        timeout=60,
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {
        "totalTokens": 1,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1}],
    }


def test_model_routes_need_a_custody_key(gateway) -> None:
    for method, path in (
        ("GET", "/v1beta/models"),
        ("GET", f"/v1beta/models/{FLASH}"),
        ("POST", f"/v1beta/models/{FLASH}:countTokens"),
    ):
        resp = httpx.request(method, gateway.base_url + path, json={}, timeout=30)
        assert resp.status_code == 401, (path, resp.text)
        assert resp.json()["error"]["status"] == "UNAUTHENTICATED"


# --- the upstream sees Custody's key, never the caller's -------------------------------------


@pytest.fixture()
def over_capture(tmp_path: Path) -> Iterator[tuple[RunningCustody, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []
    app = FastAPI()

    async def _keep(request: Request) -> None:
        seen.append({"headers": dict(request.headers), "query": str(request.url.query)})

    @app.get("/{version}/models")
    async def models(version: str, request: Request) -> Response:
        await _keep(request)
        return Response(
            orjson.dumps({"models": [{"name": "models/m"}]}), media_type="application/json"
        )

    @app.get("/{version}/models/{model}")
    async def model(version: str, model: str, request: Request) -> Response:
        await _keep(request)
        return Response(orjson.dumps({"name": f"models/{model}"}), media_type="application/json")

    @app.post("/{version}/models/{model_action}")
    async def count(version: str, model_action: str, request: Request) -> Response:
        await _keep(request)
        return Response(orjson.dumps({"totalTokens": 3}), media_type="application/json")

    upstream = ThreadedServer(app).start()
    running = start_custody(
        tmp_path / "c", upstream_base_url=upstream.base_url, upstream_api_key="upstream-secret-9"
    )
    try:
        yield running, seen
    finally:
        running.stop()
        upstream.stop()


def test_model_routes_forward_with_the_upstream_key_only(over_capture) -> None:
    custody, seen = over_capture
    key = custody.keys["editor"]
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=custody.base_url))
    assert [m.name for m in client.models.list()] == ["models/m"]
    assert client.models.get(model="m").name == "models/m"
    assert client.models.count_tokens(model=FLASH, contents="hi").total_tokens == 3
    httpx.get(f"{custody.base_url}/v1beta/models?key={key}&pageSize=2", timeout=30)
    assert len(seen) == 4
    for request in seen:
        assert request["headers"]["x-goog-api-key"] == "upstream-secret-9"  # type: ignore[index]
        assert key not in str(request), "a Custody key reached the upstream"
    assert seen[3]["query"] == "pageSize=2"
    types_ = [e["type"] for e in custody.ledger_events()]
    assert types_.count("models.listed") == 2 and "models.fetched" in types_
    assert "tokens.counted" in types_


def test_a_bad_session_header_on_models_list_is_refused_and_recorded(gateway) -> None:
    resp = httpx.get(
        gateway.base_url + "/v1beta/models",
        headers={"x-goog-api-key": gateway.keys["editor"], "x-custody-session": "s" * 70_000},
        timeout=30,
    )
    assert resp.status_code == 400 and "x-custody-session" in resp.json()["error"]["message"]
    events = gateway.ledger_events(resp.headers["x-custody-turn"])
    assert [e["type"] for e in events] == ["request.refused"]
    assert events[0]["session"] is None


def test_emulator_pages_models_and_counts_tokens_in_gemini_wire_format() -> None:
    from fastapi.testclient import TestClient

    from governance.upstream.emulator import create_emulator_app

    with TestClient(create_emulator_app()) as http:
        first = http.get("/v1beta/models?pageSize=1").json()
        assert [m["name"] for m in first["models"]] == [f"models/{FLASH}"]
        assert set(first["models"][0]) >= {"name", "displayName", "supportedGenerationMethods"}
        second = http.get(f"/v1beta/models?pageSize=1&pageToken={first['nextPageToken']}").json()
        assert [m["name"] for m in second["models"]] == [f"models/{PRO}"]
        assert "nextPageToken" not in second
        assert http.get("/v1beta/models?pageToken=zz").status_code == 400
        body = {
            "systemInstruction": {"parts": [{"text": "abcdefgh"}]},
            "contents": [{"parts": [{"text": "abc"}]}],
        }
        counted = http.post(f"/v1/models/{FLASH}:countTokens", json=body).json()
        assert counted == {
            "totalTokens": 3,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 3}],
        }
        assert http.post(f"/v1/models/{FLASH}:countTokens", json={}).status_code == 400
