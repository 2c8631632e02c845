"""Erasure of content through the API and the CLI: authorised by tenant, recorded in the ledger
before the blob is destroyed, and the ledger still verifies (counting the erasure)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from google import genai
from google.genai import types

from governance.auth.keys import parse_key
from storage.blobs import Commitments
from tests.keys_helpers import call, cli, cli_ok, events_of, gateway, new_key, verify_ok

PHOTO = "earth_apollo17.jpg"


@pytest.fixture()
def served(tmp_path: Path, db_url: str):
    with gateway(tmp_path / "custody", db_url) as running:
        yield running


def _edit(running, key: str, photo: bytes) -> dict:
    """One edit turn of ``photo``; its turn.received event."""
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=running.base_url))
    response = client.models.generate_content(
        model="gemini-2.5-flash-image",
        contents=[types.Part.from_bytes(data=photo, mime_type="image/jpeg"), "make it teal"],
    )
    turn = response.sdk_http_response.headers["x-custody-turn"]
    (received,) = [e for e in running.ledger_events(turn) if e["type"] == "turn.received"]
    return received


def _commitments(running) -> Commitments:
    return Commitments(running.services.engine, running.services.blobs)


def test_an_admin_erases_its_tenants_content_through_the_api(served, photo_bytes) -> None:
    photo = photo_bytes[PHOTO]
    digest = hashlib.sha256(photo).hexdigest()
    commitment = _edit(served, served.keys["editor"], photo)["body"]["images"][0]["commitment"]
    assert served.services.blobs.exists(digest)
    operator = new_key(served, "--role", "operator", "--tenant", "custody")
    made = call(
        served, "POST", "/api/v1/keys", operator, json={"tenant": "globex", "roles": ["admin"]}
    )
    globex_admin = made.json()["key"]
    request = {"commitment": commitment, "reason": "GDPR art. 17 request 42"}

    resp = call(served, "POST", "/api/v1/erasures", globex_admin, json=request)
    assert resp.status_code == 404 and resp.json()["error"]["details"][0]["reason"] == (
        "CONTENT_NOT_FOUND"
    )
    missing = {"digest": "0" * 64, "reason": "x"}
    other = call(served, "POST", "/api/v1/erasures", served.keys["admin"], json=missing)
    assert other.status_code == 404
    assert other.json()["error"]["message"] == resp.json()["error"]["message"].replace(
        "globex", "acme"
    ), "missing content and another tenant's content get the same answer"
    resp = call(served, "POST", "/api/v1/erasures", served.keys["editor"], json=request)
    assert resp.status_code == 403
    resp = call(served, "POST", "/api/v1/erasures", served.keys["admin"], json={"digest": digest})
    assert resp.status_code == 400, "a reason is required"
    assert served.services.blobs.exists(digest), "nothing was erased by a refused request"

    resp = call(served, "POST", "/api/v1/erasures", served.keys["admin"], json=request)
    assert resp.status_code == 200, resp.text
    erased = resp.json()["erased"]
    assert erased["blob_was_present"] and erased["tenants"] == ["acme"]
    assert commitment in erased["commitments"]
    assert not served.services.blobs.exists(digest)
    assert _commitments(served).check(commitment) == "erased"

    (event,) = events_of(served, "content.erased")
    assert event["tenant"] == "acme" and event["actor"] == "admin@acme"
    assert event["body"]["reason"] == "GDPR art. 17 request 42"
    assert event["body"]["by"]["key"] == parse_key(served.keys["admin"])[0]
    assert commitment in event["body"]["commitments"]
    assert digest not in str(event), "the bare digest would let anyone test a guess"
    report = verify_ok(served)
    assert report["erased_blobs"] >= 1

    again = call(served, "POST", "/api/v1/erasures", served.keys["admin"], json=request)
    assert again.status_code == 409


def test_shared_content_needs_an_operator_and_the_cli_erases_it(served, photo_bytes) -> None:
    photo = photo_bytes[PHOTO]
    digest = hashlib.sha256(photo).hexdigest()
    _edit(served, served.keys["editor"], photo)
    _edit(served, served.keys["other-tenant-editor"], photo)
    resp = call(
        served,
        "POST",
        "/api/v1/erasures",
        served.keys["admin"],
        json={"digest": digest, "reason": "takedown"},
    )
    assert resp.status_code == 403
    assert resp.json()["error"]["details"][0]["reason"] == "CONTENT_SHARED"

    bad = cli(served, "erase", "not-a-digest", "--reason", "x")
    assert bad.returncode == 2 and "SHA-256 digest" in bad.stderr
    out = cli_ok(served, "erase", digest, "--reason", "court order 7", "--by", "legal@custody")
    assert out.startswith("Erased:") and "'acme', 'globex'" in out
    assert not served.services.blobs.exists(digest)
    events = events_of(served, "content.erased")
    assert sorted(e["tenant"] for e in events) == ["acme", "globex"]
    assert {e["body"]["by"]["actor"] for e in events} == {"legal@custody"}
    assert all(e["body"]["reason"] == "court order 7" for e in events)
    commitments = events[0]["body"]["commitments"]
    assert len(commitments) >= 2 and all(
        _commitments(served).check(c) == "erased" for c in commitments
    )
    report = verify_ok(served)
    assert report["erased_blobs"] >= 2
