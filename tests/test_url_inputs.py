"""URL inputs (``fileData.fileUri``) through a real gateway and the real google-genai SDK.

Denied by default with a 400 in Gemini's envelope, recorded; where the tenant's policy says
``url_inputs: "fetch"``, Custody fetches the URL itself (here from a real HTTP server on
127.0.0.1, which the test settings allow explicitly) and inlines the bytes: the emulator upstream,
which refuses any ``fileData``, edits the fetched photo, and the ledger commits to it."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.genai import errors, types

from tests.conftest import RunningCustody, start_custody, write_test_policy
from tests.url_servers import LocalServer, redirect, serve

MODEL = "gemini-2.5-flash-image"
REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"
LOCAL_FETCH = {"url_input_schemes": ["http"], "url_input_allow_networks": ["127.0.0.1/32"]}


def _policy_fetching_for_acme(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, target)
    tenants = target / "custody" / "tenants" / "data.json"
    data = json.loads(tenants.read_text())
    data["acme"]["url_inputs"] = "fetch"
    data["acme"]["require_consent_for_people"] = False
    tenants.write_text(json.dumps(data))
    return target


@pytest.fixture()
def photo_server(photo_bytes: dict[str, bytes]) -> Iterator[LocalServer]:
    routes = {
        "/photo.png": serve(photo_bytes["sample1.png"], "image/png"),
        "/lying.png": serve(b"this is text, not a picture", "image/png"),
        "/hop": redirect("/photo.png"),
        "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
    }
    with LocalServer(routes) as server:
        yield server


@pytest.fixture()
def fetching(tmp_path: Path) -> Iterator[RunningCustody]:
    running = start_custody(
        tmp_path / "custody", policy_dir=_policy_fetching_for_acme(tmp_path), **LOCAL_FETCH
    )
    try:
        yield running
    finally:
        running.stop()


def _edit(custody: RunningCustody, uri: str, mime: str | None = "image/png") -> object:
    client = custody.client()
    return client.models.generate_content(  # type: ignore[attr-defined]
        model=MODEL,
        contents=[types.Part.from_uri(file_uri=uri, mime_type=mime), "make the sky teal"],
    )


def _last_turn(custody: RunningCustody) -> list[dict[str, object]]:
    events = custody.ledger_events()
    last = [e for e in events if e.get("turn")][-1]["turn"]
    return [e for e in events if e.get("turn") == last]


def _refusal(caught: pytest.ExceptionInfo[errors.ClientError]) -> tuple[int, str, str]:
    error = caught.value.details["error"]
    return error["code"], error["details"][0]["reason"], error["message"]


def test_url_inputs_are_denied_by_default_with_a_recorded_400(
    custody: RunningCustody, photo_server: LocalServer
) -> None:
    with pytest.raises(errors.ClientError) as caught:
        _edit(custody, photo_server.url("/photo.png"))
    code, reason, message = _refusal(caught)
    assert (code, reason) == (400, "URL_INPUT_DENIED")
    assert "inlineData" in message and caught.value.status == "INVALID_ARGUMENT"
    assert photo_server.seen == [], "Custody fetched nothing"
    events = _last_turn(custody)
    assert [e["type"] for e in events] == ["turn.received", "policy.decided", "turn.failed"]
    assert events[0]["body"]["file_uris"] == 1
    assert events[-1]["body"]["reason"] == "URL_INPUT_DENIED"


def test_a_policy_that_allows_without_the_fetch_obligation_still_never_forwards_a_url(
    tmp_path: Path, photo_server: LocalServer
) -> None:
    running = start_custody(tmp_path / "c", policy_dir=write_test_policy(tmp_path), **LOCAL_FETCH)
    try:
        with pytest.raises(errors.ClientError) as caught:
            _edit(running, photo_server.url("/photo.png"))
        assert _refusal(caught)[:2] == (400, "URL_INPUT_DENIED")
        types_ = [e["type"] for e in _last_turn(running)]
        assert "upstream.requested" not in types_ and types_[-1] == "turn.failed"
        assert photo_server.seen == []
    finally:
        running.stop()


def test_an_allowed_url_is_fetched_inlined_recorded_and_edited(
    fetching: RunningCustody, photo_server: LocalServer, photo_bytes: dict[str, bytes]
) -> None:
    photo = photo_bytes["sample1.png"]
    answer = _edit(fetching, photo_server.url("/hop"))
    images = [p for p in answer.candidates[0].content.parts if p.inline_data]  # type: ignore[attr-defined]
    assert images, "the emulator (which refuses fileData) edited the inlined photo"
    assert [p for p, _ in photo_server.seen] == ["/hop", "/photo.png"]
    events = _last_turn(fetching)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["turn.received", "url_inputs.fetched", "policy.decided"]
    assert kinds[-1] == "turn.released"
    received, fetched = events[0]["body"], events[1]["body"]
    assert received["file_uris"] == 0, "turn.received describes the request as forwarded"
    (parent,) = received["images"]
    assert parent["role"] == "parent" and parent["bytes"] == len(photo)
    (one,) = fetched["inputs"]
    assert one["address"] == "127.0.0.1" and one["redirects"] == 1 and one["bytes"] == len(photo)
    assert one["host"] == "127.0.0.1" and "photo" not in json.dumps(fetched), "no URL path kept"
    assert fetched["request"] != received["request"]
    # the photo's bytes are in the turn index, hashed, like any inline input
    from sqlalchemy import text

    with fetching.services.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            text("SELECT sha256 FROM turn_images WHERE direction = 'input'")
        ).fetchall()
    assert rows[-1][0] == hashlib.sha256(photo).hexdigest()
    upstream_requested = next(e for e in events if e["type"] == "upstream.requested")
    assert upstream_requested is not None


def test_fetched_bytes_are_sniffed_like_inline_ones(
    fetching: RunningCustody, photo_server: LocalServer
) -> None:
    with pytest.raises(errors.ClientError) as caught:
        _edit(fetching, photo_server.url("/lying.png"))
    assert _refusal(caught)[:2] == (400, "MIME_TYPE_MISMATCH")
    events = _last_turn(fetching)
    assert events[-1]["type"] == "turn.failed"
    assert not any(e["type"] == "upstream.requested" for e in events)


def test_a_redirect_to_the_metadata_address_is_refused_and_recorded(
    fetching: RunningCustody, photo_server: LocalServer
) -> None:
    with pytest.raises(errors.ClientError) as caught:
        _edit(fetching, photo_server.url("/to-metadata"))
    code, reason, message = _refusal(caught)
    assert (code, reason) == (400, "URL_INPUT_REFUSED") and "metadata" in message
    events = _last_turn(fetching)
    assert [e["type"] for e in events] == ["turn.failed"]
    assert events[0]["body"]["reason"] == "URL_INPUT_REFUSED"
    assert "request" in events[0]["body"], "what was sent is committed"


def test_the_default_outbound_rules_refuse_a_loopback_url_even_for_an_allowing_tenant(
    tmp_path: Path, photo_server: LocalServer
) -> None:
    running = start_custody(tmp_path / "c", policy_dir=_policy_fetching_for_acme(tmp_path))
    try:
        with pytest.raises(errors.ClientError) as caught:
            _edit(running, photo_server.url("/photo.png").replace("http:", "https:"))
        code, reason, message = _refusal(caught)
        assert (code, reason) == (400, "URL_INPUT_REFUSED") and "loopback" in message
        with pytest.raises(errors.ClientError) as caught:
            _edit(running, "file:///etc/passwd")
        assert "scheme" in _refusal(caught)[2]
        assert photo_server.seen == []
    finally:
        running.stop()


def test_count_tokens_never_forwards_a_url_even_for_an_allowing_tenant(
    fetching: RunningCustody, custody: RunningCustody, photo_server: LocalServer
) -> None:
    for running in (fetching, custody):
        with pytest.raises(errors.ClientError) as caught:
            running.client().models.count_tokens(  # type: ignore[attr-defined]
                model=MODEL,
                contents=[
                    types.Part.from_uri(
                        file_uri=photo_server.url("/photo.png"), mime_type="image/png"
                    ),
                    "make the sky teal",
                ],
            )
        assert _refusal(caught)[:2] == (400, "URL_INPUT_DENIED")
    assert photo_server.seen == []
