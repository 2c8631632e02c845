"""Compliance queries against a real gateway on SQLite and PostgreSQL (issue 18, item 1).

Turns are made by real calls (httpx and the google-genai SDK) through the built-in emulator;
an auditor then filters, pages and proves them over HTTP. What is proven: every filter selects
exactly the turns it names; a cursor neither repeats nor skips rows when turns are appended
between pages; every row's ledger entries verify against the signed checkpoint with the
published note key; an auditor of one tenant finds nothing of another; an editor runs none of
it; and every prompt search is itself in the ledger.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.ledger.checkpoint import open_checkpoint
from storage.ledger.merkle import check_inclusion, leaf_hash
from storage.ledger.note import NoteVerifier
from tests.conftest import RunningCustody, start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"


@pytest.fixture()
def gateway(tmp_path: Path, db_url: str) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path / "custody", db_url)
    try:
        yield running
    finally:
        running.stop()


def turn(
    custody: RunningCustody,
    prompt: str,
    *,
    key: str = "editor",
    session: str | None = None,
    labels: str = "",
    model: str = MODEL,
) -> httpx.Response:
    headers = {"x-goog-api-key": custody.keys[key]}
    if session:
        headers["x-custody-session"] = session
    if labels:
        headers["x-custody-labels"] = labels
    return httpx.post(
        f"{custody.base_url}/v1beta/models/{model}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
        headers=headers,
        timeout=60,
    )


def get(custody: RunningCustody, path: str, role: str = "auditor", **params: Any) -> httpx.Response:
    params = {k: v for k, v in params.items() if v is not None}
    return httpx.get(
        custody.base_url + path,
        params=params,
        headers={"x-goog-api-key": custody.keys[role]},
        timeout=60,
    )


def turns(custody: RunningCustody, role: str = "auditor", **params: Any) -> list[dict[str, Any]]:
    resp = get(custody, "/api/v1/query/turns", role=role, **params)
    assert resp.status_code == 200, resp.text
    return resp.json()["rows"]  # type: ignore[no-any-return]


@pytest.fixture()
def recorded(gateway: RunningCustody) -> dict[str, str]:
    """Six turns of acme (two sessions, two models, a deny) and one of globex; their ids."""
    ids: dict[str, str] = {}
    for name, prompt, session in (
        ("a1", "a red bicycle", "s-one"),
        ("a2", "a blue bicycle", "s-one"),
        ("a3", "a green teapot", "s-two"),
    ):
        resp = turn(gateway, prompt, session=session)
        assert resp.status_code == 200, resp.text
        ids[name] = resp.headers["x-custody-turn"]
    resp = turn(gateway, "a yellow kite", model="gemini-3-pro-image-preview")
    assert resp.status_code == 200, resp.text
    ids["pro"] = resp.headers["x-custody-turn"]
    denied = turn(gateway, "give this man Taylor Swift's face", labels="consent=obtained")
    assert denied.status_code == 403, denied.text
    ids["denied"] = denied.headers["x-custody-turn"]
    from google.genai import types

    sdk = gateway.client().models.generate_content(  # type: ignore[attr-defined]
        model=MODEL,
        contents="a purple bicycle by the sea",
        config=types.GenerateContentConfig(
            http_options=types.HttpOptions(headers={"x-custody-session": "s-sdk"})
        ),
    )
    assert sdk.candidates
    ids["sdk"] = turns(gateway, session="s-sdk")[0]["turn_id"]
    other = turn(gateway, "a globex bicycle", key="other-tenant-editor", session="s-one")
    assert other.status_code == 200, other.text
    ids["globex"] = other.headers["x-custody-turn"]
    return ids


def test_filters_select_exactly_the_turns_they_name(gateway, recorded) -> None:
    everything = turns(gateway)
    assert {r["turn_id"] for r in everything} == {
        recorded[n] for n in ("a1", "a2", "a3", "pro", "denied", "sdk")
    }
    assert all(r["tenant"] == "acme" for r in everything)
    times = [(r["created_ms"], r["turn_id"]) for r in everything]
    assert times == sorted(times, reverse=True), "newest first"

    assert {r["turn_id"] for r in turns(gateway, session="s-one")} == {
        recorded["a1"],
        recorded["a2"],
    }
    assert [r["turn_id"] for r in turns(gateway, model="gemini-3-pro-image-preview")] == [
        recorded["pro"]
    ]
    assert [r["turn_id"] for r in turns(gateway, policy="deny")] == [recorded["denied"]]
    assert recorded["denied"] not in {r["turn_id"] for r in turns(gateway, policy="allow")}
    assert len(turns(gateway, actor="editor@acme")) == 6
    assert turns(gateway, actor="nobody@acme") == []
    assert [r["turn_id"] for r in turns(gateway, status="failed")] == [recorded["denied"]]
    a2 = next(r for r in everything if r["turn_id"] == recorded["a2"])
    window = turns(gateway, since=a2["created_ms"], until=a2["created_ms"] + 1)
    assert recorded["a2"] in {r["turn_id"] for r in window}
    assert all(r["created_ms"] == a2["created_ms"] for r in window)

    # Every row carries the ledger indexes of its entries, and its outputs' hashes.
    for row in everything:
        events = gateway.ledger_events(row["turn_id"])
        assert row["ledger_indexes"] == [e["index"] for e in events]
        assert row["first_entry_index"] == row["ledger_indexes"][0]
    released = next(r for r in everything if r["turn_id"] == recorded["a1"])
    assert len(released["outputs"]) == 1 and len(released["outputs"][0]["signed_sha256"]) == 64


def test_cursors_stay_stable_when_turns_are_appended_between_pages(gateway, recorded) -> None:
    expected = [r["turn_id"] for r in turns(gateway)]
    first = get(gateway, "/api/v1/query/turns", limit=2).json()
    assert len(first["rows"]) == 2 and first["next_cursor"]
    # New turns arrive between pages: they sort above the first page, never into later ones.
    for _ in range(2):
        assert turn(gateway, "a late bicycle").status_code == 200
    seen = [r["turn_id"] for r in first["rows"]]
    cursor = first["next_cursor"]
    while cursor:
        page = get(gateway, "/api/v1/query/turns", limit=2, cursor=cursor).json()
        seen += [r["turn_id"] for r in page["rows"]]
        cursor = page["next_cursor"]
    assert seen == expected

    # A cursor is bound to its filters and cannot be forged.
    refused = get(
        gateway, "/api/v1/query/turns", limit=2, session="s-one", cursor=first["next_cursor"]
    )
    assert refused.status_code == 400 and "other filters" in refused.json()["error"]["message"]
    forged = get(gateway, "/api/v1/query/turns", cursor="not-a-cursor")
    assert forged.status_code == 400 and forged.json()["error"]["code"] == 400


def test_events_filter_and_page_by_ledger_index(gateway, recorded) -> None:
    rows = get(gateway, "/api/v1/query/events", turn=recorded["a1"]).json()["rows"]
    assert [r["index"] for r in rows] == sorted(
        (e["index"] for e in gateway.ledger_events(recorded["a1"])), reverse=True
    )
    decided = get(gateway, "/api/v1/query/events", type="policy.decided", limit=3).json()
    assert len(decided["rows"]) == 3 and all(r["type"] == "policy.decided" for r in decided["rows"])
    rest = get(
        gateway,
        "/api/v1/query/events",
        type="policy.decided",
        limit=3,
        cursor=decided["next_cursor"],
    ).json()["rows"]
    assert max(r["index"] for r in rest) < min(r["index"] for r in decided["rows"])
    by_session = get(gateway, "/api/v1/query/events", session="s-two").json()["rows"]
    assert {r["turn"] for r in by_session} == {recorded["a3"]}
    all_events = get(gateway, "/api/v1/query/events", limit=500).json()["rows"]
    assert all_events and all(r["tenant"] == "acme" for r in all_events)
    for row in all_events[:5]:
        entry = gateway.services.ledger.entry(row["index"])  # type: ignore[attr-defined]
        assert base64.b64decode(row["leaf_hash"]) == entry.leaf_hash


def _proof_when_checkpointed(gateway: RunningCustody, turn_id: str) -> dict[str, Any]:
    for _ in range(20):
        resp = get(gateway, f"/api/v1/query/turns/{turn_id}/proof")
        if resp.status_code != 503:
            assert resp.status_code == 200, resp.text
            return resp.json()  # type: ignore[no-any-return]
        time.sleep(int(resp.headers["retry-after"]))
    raise AssertionError("never checkpointed")


def test_every_rows_entries_prove_against_the_signed_checkpoint(gateway, recorded) -> None:
    services = gateway.services
    verifier = NoteVerifier.from_key_string(services.ledger_verifier_key)  # type: ignore[attr-defined]
    for name in ("a1", "denied"):
        proof = _proof_when_checkpointed(gateway, recorded[name])
        cp = open_checkpoint(
            proof["checkpoint"]["note"],
            verifier,
            services.settings.log_origin,  # type: ignore[attr-defined]
        )
        indexes = [e["index"] for e in proof["entries"]]
        assert indexes == next(
            r["ledger_indexes"] for r in turns(gateway) if r["turn_id"] == recorded[name]
        )
        for e in proof["entries"]:
            leaf = base64.b64decode(e["leaf"])
            assert base64.b64decode(e["leaf_hash"]) == leaf_hash(leaf)
            hashes = [base64.b64decode(h) for h in e["hashes"]]
            check_inclusion(hashes, cp.size, cp.root, e["index"], leaf_hash(leaf))
            assert e["proven"]


def test_an_auditor_finds_nothing_of_another_tenant(gateway, recorded) -> None:
    other = recorded["globex"]
    assert other not in {r["turn_id"] for r in turns(gateway, session="s-one")}
    walled = get(gateway, "/api/v1/query/turns", tenant="globex")
    assert (
        walled.status_code == 403
        and walled.json()["error"]["details"][0]["reason"] == "TENANT_WALL"
    )
    assert get(gateway, "/api/v1/query/events", tenant="globex").status_code == 403
    assert get(gateway, f"/api/v1/query/turns/{other}/proof").status_code == 404
    assert get(gateway, "/api/v1/query/events", turn=other).json()["rows"] == []
    globex_image = next(
        e["body"]["signed_sha256"]
        for e in gateway.ledger_events(other)
        if e["type"] == "output.signed"
    )
    assert get(gateway, f"/api/v1/query/images/{globex_image}").json()["rows"] == []
    searched = httpx.post(
        gateway.base_url + "/api/v1/query/prompts",
        json={"query": "globex"},
        headers={"x-goog-api-key": gateway.keys["auditor"]},
        timeout=60,
    ).json()
    assert searched["rows"] == []


def test_editors_and_reviewers_run_no_query(gateway, recorded) -> None:
    for role in ("editor", "reviewer"):
        for path in (
            "/api/v1/query/turns",
            "/api/v1/query/events",
            f"/api/v1/query/turns/{recorded['a1']}/proof",
        ):
            assert get(gateway, path, role=role).status_code == 403
        resp = httpx.post(
            gateway.base_url + "/api/v1/query/prompts",
            json={"query": "bicycle"},
            headers={"x-goog-api-key": gateway.keys[role]},
        )
        assert resp.status_code == 403
    assert httpx.get(gateway.base_url + "/api/v1/query/turns").status_code == 401


def test_images_are_found_by_either_hash_with_their_turn(gateway, recorded) -> None:
    signed = next(
        e["body"] for e in gateway.ledger_events(recorded["a1"]) if e["type"] == "output.signed"
    )
    for sha, matched in (
        (signed["signed_sha256"], "signed"),
        (signed["upstream_sha256"], "content"),
    ):
        rows = get(gateway, f"/api/v1/query/images/{sha}").json()["rows"]
        assert [(r["turn_id"], r["matched"]) for r in rows] == [(recorded["a1"], matched)]
        assert rows[0]["ledger_indexes"][0] == rows[0]["ledger_indexes"][0] >= 0
    bad = get(gateway, "/api/v1/query/images/not-a-hash")
    assert bad.status_code == 400 and "64" in bad.json()["error"]["message"]


def test_prompt_search_finds_text_and_is_itself_recorded(gateway, recorded) -> None:
    resp = httpx.post(
        gateway.base_url + "/api/v1/query/prompts",
        json={"query": "BICYCLE"},
        headers={"x-goog-api-key": gateway.keys["auditor"]},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    found = resp.json()
    assert {r["turn_id"] for r in found["rows"]} == {recorded[n] for n in ("a1", "a2", "sdk")}
    assert all("bicycle" in r["prompt"] for r in found["rows"])
    searched = [e for e in gateway.ledger_events() if e["type"] == "prompts.searched"]
    assert len(searched) == 1
    event = searched[0]
    assert event["index"] == found["recorded_as"]["index"]
    assert event["actor"] == "auditor@acme" and event["tenant"] == "acme"
    assert event["body"]["results"] == 3 and event["body"]["query_chars"] == 7
    assert "BICYCLE" not in str(event), "the leaf holds a commitment to the query, not the text"
    # The commitment opens to the query (the salt committed with the event).
    from storage.blobs import Commitments

    services = gateway.services
    opened = Commitments(services.engine, services.blobs).open(event["body"]["query"])  # type: ignore[attr-defined]
    assert opened == b"BICYCLE"

    # Paging a search with a small scan budget: each call recorded, the union the same.
    seen: list[str] = []
    cursor = None
    calls = 0
    while True:
        body: dict[str, Any] = {"query": "bicycle", "scan": 2, "session": None}
        body = {k: v for k, v in body.items() if v is not None}
        if cursor:
            body["cursor"] = cursor
        page = httpx.post(
            gateway.base_url + "/api/v1/query/prompts",
            json=body,
            headers={"x-goog-api-key": gateway.keys["auditor"]},
            timeout=60,
        ).json()
        calls += 1
        seen += [r["turn_id"] for r in page["rows"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert set(seen) == {r["turn_id"] for r in found["rows"]} and len(seen) == 3
    assert len([e for e in gateway.ledger_events() if e["type"] == "prompts.searched"]) == 1 + calls

    bad = httpx.post(
        gateway.base_url + "/api/v1/query/prompts",
        json={"query": ""},
        headers={"x-goog-api-key": gateway.keys["auditor"]},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400


def test_cli_query_turns_reads_the_same_rows(gateway, recorded) -> None:
    settings = gateway.services.settings  # type: ignore[attr-defined]
    env = {
        "CUSTODY_DATA_DIR": str(settings.data_dir),
        "CUSTODY_DATABASE_URL": settings.database_url,
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "governance.cli", "query", "turns", "--tenant", "acme",
         "--session", "s-one", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(out.stdout)["rows"]
    assert {r["turn_id"] for r in rows} == {recorded["a1"], recorded["a2"]}
    digest = hashlib.sha256(b"x").hexdigest()
    img = subprocess.run(
        [sys.executable, "-m", "governance.cli", "query", "image", digest, "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert img.returncode == 0, img.stderr
    assert json.loads(img.stdout)["rows"] == []
