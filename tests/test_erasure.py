"""Erasure of content through the API and the CLI: authorised by tenant, recorded in the ledger
before the blob is destroyed, and the ledger still verifies (counting the erasure)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import types

from governance.auth.keys import parse_key
from storage.blobs import Commitments
from tests.keys_helpers import call, cli, cli_ok, events_of, gateway, new_key, verify_ok

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

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


def _blob_of(running, commitment: str) -> str:
    digest = _commitments(running).digest_of(commitment)
    assert digest is not None, commitment
    return digest


def _decided_inputs(running, turn: str) -> list[str]:
    return [
        e["body"]["input"] for e in running.ledger_events(turn) if e["type"] == "policy.decided"
    ]


def test_erasing_a_prompt_erases_the_request_and_decision_inputs_holding_it(
    served, photo_bytes
) -> None:
    """The prompt is in three blobs: its own, the request body and the decision inputs (the
    policy's full input). Erasing it through the API erases all three; the ledger verifies and
    replay skips the turn. A decision input is also erasable alone, by the commitment its
    ``policy.decided`` entry holds, and another tenant's admin cannot find it."""
    from governance.policy.replay import load_recorded_inputs

    photo = photo_bytes[PHOTO]
    received = _edit(served, served.keys["editor"], photo)
    turn = received["turn"]
    prompt, request = received["body"]["prompt"], received["body"]["request"]
    inputs = _decided_inputs(served, turn)
    assert len(inputs) == 2, "a request and a response decision"
    copies = [_blob_of(served, request), *(_blob_of(served, c) for c in inputs)]
    blobs = served.services.blobs
    assert all(blobs.exists(d) for d in copies)
    assert b"make it teal" in blobs.get(copies[0]) and b"make it teal" in blobs.get(copies[1])

    resp = call(
        served,
        "POST",
        "/api/v1/erasures",
        served.keys["admin"],
        json={"commitment": prompt, "reason": "data subject request 7"},
    )
    assert resp.status_code == 200, resp.text
    erased = resp.json()["erased"]
    assert request in erased["copies"] and set(inputs) <= set(erased["copies"])
    assert not blobs.exists(_blob_of(served, prompt))
    assert not any(blobs.exists(d) for d in copies), "no copy of the prompt is left"
    assert blobs.exists(hashlib.sha256(photo).hexdigest()), "the photo is not the prompt"
    (event,) = events_of(served, "content.erased")
    assert {prompt, request, *inputs} <= set(event["body"]["commitments"])
    verify_ok(served)
    notes: list[str] = []
    load_recorded_inputs(served.services.settings, 10, notes=notes)
    assert f"turn {turn}: skipped, its recorded request input was erased" in notes

    other = _edit(served, served.keys["editor"], photo_bytes["IMG_0003.jpg"])
    decision_input = _decided_inputs(served, other["turn"])[0]
    request_of_other = _blob_of(served, other["body"]["request"])
    body = {"commitment": decision_input, "reason": "x"}
    elsewhere = call(
        served, "POST", "/api/v1/erasures", served.keys["other-tenant-editor"], json=body
    )
    assert elsewhere.status_code == 403, "an editor may not erase"
    globex_admin = new_key(served, "--role", "admin", "--tenant", "globex")
    elsewhere = call(served, "POST", "/api/v1/erasures", globex_admin, json=body)
    assert elsewhere.status_code == 404, elsewhere.text
    resp = call(served, "POST", "/api/v1/erasures", served.keys["admin"], json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["erased"]["copies"] == [], "a decision input is nobody's source"
    assert not blobs.exists(_blob_of(served, decision_input))
    assert blobs.exists(request_of_other)
    verify_ok(served)


def test_erasing_an_input_image_erases_the_request_bodies_holding_it(served, photo_bytes) -> None:
    photo = photo_bytes[PHOTO]
    first = _edit(served, served.keys["editor"], photo)
    second = _edit(served, served.keys["editor"], photo)
    requests = [_blob_of(served, r["body"]["request"]) for r in (first, second)]
    blobs = served.services.blobs
    encoded = (base64.b64encode(photo)[:4096], base64.urlsafe_b64encode(photo)[:4096])
    assert all(any(e in blobs.get(d) for e in encoded) for d in requests), "the photo is in them"
    out = cli_ok(
        served, "erase", hashlib.sha256(photo).hexdigest(), "--reason", "takedown", "--json"
    )
    import json

    erased = json.loads(out)
    assert {first["body"]["request"], second["body"]["request"]} <= set(erased["copies"])
    assert not any(blobs.exists(d) for d in requests), "no request body still holds the photo"
    assert blobs.exists(_blob_of(served, first["body"]["prompt"])), "the prompt is not the photo"
    verify_ok(served)


def test_an_image_of_a_turn_whose_image_list_went_to_a_blob_takes_its_copies(served) -> None:
    """500 inputs are too many for the leaf (the list goes to a blob, see test_leaf_bounds):
    the turn is still found from its index rows, and its request body erased with the image."""
    from tests.test_leaf_bounds import _png

    images = [_png(i) for i in range(500)]
    parts: list[dict[str, object]] = [
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(p).decode()}}
        for p in images
    ]
    parts.append({"text": "apply the same warm tone to all of these"})
    resp = httpx.post(
        served.base_url + "/v1beta/models/gemini-2.5-flash-image:generateContent",
        json={"contents": [{"role": "user", "parts": parts}]},
        headers={"x-goog-api-key": served.keys["editor"]},
        timeout=300,
    )
    turn = resp.headers["x-custody-turn"]
    (received,) = [e for e in served.ledger_events(turn) if e["type"] == "turn.received"]
    assert "images" not in received["body"], "the list went to a blob"
    request = _blob_of(served, received["body"]["request"])
    assert served.services.blobs.exists(request)
    verify_ok(served)  # the verifier reads an image list spilled to a blob
    digest = hashlib.sha256(images[7]).hexdigest()
    resp = call(
        served,
        "POST",
        "/api/v1/erasures",
        served.keys["admin"],
        json={"digest": digest, "reason": "one photo of the set"},
    )
    assert resp.status_code == 200, resp.text
    assert received["body"]["request"] in resp.json()["erased"]["copies"]
    assert not served.services.blobs.exists(request)
    verify_ok(served)
    listing = {"commitment": received["body"]["images_blob"], "reason": "the list too"}
    resp = call(served, "POST", "/api/v1/erasures", served.keys["admin"], json=listing)
    assert resp.status_code == 200, resp.text
    verify_ok(served)  # an image list that cannot be opened any more is checked by its count
