"""Tenant walls (issue 14): tenant B's admin, auditor or reviewer sees nothing of tenant A.

Ledger entries of another tenant show only index and leaf hash; ``POST /api/v1/verify`` tells
another tenant only that Custody released the image; ``/metrics`` serves an auditor their own
tenant's series; only the operator reads across tenants; an auditor's read never signs a
checkpoint. Bad integers and bad bytes are 400s in Gemini's envelope. All through a running server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from governance.auth.keys import create_key
from storage.ledger.events import LedgerEvent
from tests.conftest import RunningCustody, start_custody
from tests.test_gateway_provenance import _edit

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

GENERATE = "/v1beta/models/gemini-2.5-flash-image:generateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}]}


@pytest.fixture()
def walled(db_url: str, tmp_path: Path) -> Iterator[RunningCustody]:
    """A gateway on SQLite and on PostgreSQL with keys of two tenants and an operator."""
    running = start_custody(tmp_path / "custody", db_url)
    engine = running.services.engine  # type: ignore[attr-defined]
    running.keys["operator"] = create_key(
        engine, tenant="custody", actor="ops@custody", roles=["operator"]
    )
    running.keys["globex-admin"] = create_key(
        engine, tenant="globex", actor="admin@globex", roles=["admin"]
    )
    running.keys["globex-auditor"] = create_key(
        engine, tenant="globex", actor="auditor@globex", roles=["auditor"]
    )
    try:
        yield running
    finally:
        running.stop()


def _call(custody, method: str, path: str, key: str | None, **kw: object) -> httpx.Response:
    headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
    if key:
        headers["x-goog-api-key"] = custody.keys[key]
    return httpx.request(method, custody.base_url + path, headers=headers, timeout=60, **kw)


def _turn(custody, key: str) -> None:
    resp = _call(custody, "POST", GENERATE, key, json=BODY)
    assert resp.status_code == 200, resp.text


def _entries(custody, key: str) -> list[dict[str, object]]:
    resp = _call(custody, "GET", "/api/v1/ledger/entries", key)
    assert resp.status_code == 200, resp.text
    return resp.json()["entries"]  # type: ignore[no-any-return]


def test_ledger_entries_stay_behind_the_tenant_wall(walled) -> None:
    _turn(walled, "editor")  # acme
    _turn(walled, "other-tenant-editor")  # globex
    walled.services.ledger.append(
        [LedgerEvent(type="policy.reloaded", tenant="*", actor="custody", body={"r": 2})]
    )
    for key, own in (("admin", "acme"), ("auditor", "acme"), ("globex-admin", "globex")):
        entries = _entries(walled, key)
        shown = [e for e in entries if "event" in e]
        hidden = [e for e in entries if "redacted" in e]
        assert shown and hidden, key
        assert {e["event"]["tenant"] for e in shown} == {own, "*"}, key
        assert all(set(e) == {"index", "leaf_hash", "redacted"} for e in hidden), key
        assert own not in json.dumps(hidden) and "acme" not in json.dumps(hidden)
    everything = _entries(walled, "operator")
    assert all("event" in e for e in everything)
    assert {e["event"]["tenant"] for e in everything} == {"acme", "globex", "*"}


def test_an_auditors_read_never_signs_a_checkpoint(walled) -> None:
    ledger = walled.services.ledger
    ledger.checkpoint_every_ms = 600_000  # the background job stays quiet during the test
    ledger.issue_checkpoint()
    _turn(walled, "editor")
    newest = ledger.size() - 1

    def signed() -> int:
        with walled.services.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM ledger_checkpoints")).scalar_one())

    before = signed()
    resp = _call(walled, "GET", "/api/v1/ledger/proof/file", "auditor", params={"index": newest})
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["details"][0]["reason"] == "NOT_YET_CHECKPOINTED"
    assert "not yet checkpointed" in error["message"] and "retry" in error["message"]
    assert int(resp.headers["retry-after"]) >= 1
    assert _call(walled, "GET", "/api/v1/ledger/checkpoint", "auditor").status_code == 200
    assert _call(walled, "POST", "/api/v1/ledger/checkpoint", "auditor").status_code == 403
    assert signed() == before, "an auditor's requests signed a checkpoint"

    resp = _call(walled, "GET", "/api/v1/ledger/proof/file", "admin", params={"index": newest})
    assert resp.status_code == 200, resp.text
    assert signed() == before + 1
    assert _call(walled, "POST", "/api/v1/ledger/checkpoint", "operator").status_code == 200


def test_verify_tells_another_tenant_only_that_custody_released_it(custody, photo_bytes) -> None:
    engine = custody.services.engine
    custody.keys["operator"] = create_key(engine, tenant="custody", actor="ops", roles=["operator"])
    custody.keys["globex-admin"] = create_key(engine, tenant="globex", actor="a", roles=["admin"])
    signed, turn = _edit(custody, photo_bytes["sample1.png"], "image/png", "make it teal")
    custody.services.ledger.issue_checkpoint()

    def verify(key: str) -> dict[str, object]:
        resp = _call(
            custody, "POST", "/api/v1/verify", key, content=signed,
            headers={"content-type": "image/png"},
        )  # fmt: skip
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    walled = verify("globex-admin")
    other = walled["ledger"]
    # Nor does the C2PA part name the tenant, the actor or the turn (the file's own manifest does;
    # Custody's answer keeps the wall): what made the image is still said.
    assert "acme" not in str(walled) and turn not in str(walled)
    assert walled["c2pa"]["custody"]["generator"] and walled["c2pa"]["state"] == "Trusted"
    assert other == {
        "visible": False,
        "released_by_custody": True,
        "message": "this image was released by Custody; the record belongs to another tenant",
    }
    own = verify("auditor")["ledger"]
    assert own["turn_id"] == turn and own["tenant"] == "acme" and own["prompt"] == "make it teal"
    assert own["proofs_verified"] is True and own["events"]
    operator = verify("operator")["ledger"]
    assert operator["turn_id"] == turn and operator["tenant"] == "acme" and operator["events"]


def test_metrics_serve_a_tenant_only_its_own_series(custody) -> None:
    engine = custody.services.engine
    custody.keys["operator"] = create_key(engine, tenant="custody", actor="ops", roles=["operator"])
    _turn(custody, "editor")
    _turn(custody, "other-tenant-editor")
    assert _call(custody, "POST", GENERATE, None, json=BODY).status_code == 401

    def metrics(key: str) -> str:
        resp = _call(custody, "GET", "/metrics", key)
        assert resp.status_code == 200, resp.text
        return resp.text

    acme = metrics("auditor")
    assert 'custody_turns_total{outcome="released",tenant="acme"} 1.0' in acme
    assert 'tenant="acme"' in acme and "custody_upstream_latency_seconds_count" in acme
    assert "globex" not in acme and "custody_auth_failures" not in acme
    everything = metrics("operator")
    assert 'tenant="acme"' in everything and 'tenant="globex"' in everything
    assert "custody_auth_failures_total 1.0" in everything


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/ledger/entries", {"start": "99999999999999999999999"}),
        ("/api/v1/ledger/entries", {"start": 0, "end": "99999999999999999999999"}),
        ("/api/v1/ledger/entries", {"start": -1}),
        ("/api/v1/ledger/proof/inclusion", {"index": "99999999999999999999999"}),
        ("/api/v1/ledger/proof/inclusion", {"index": 0, "size": "99999999999999999999999"}),
        ("/api/v1/ledger/proof/consistency", {"old": "99999999999999999999999"}),
        ("/api/v1/ledger/proof/consistency", {"old": 1, "new": "99999999999999999999999"}),
        ("/api/v1/ledger/proof/file", {"index": "99999999999999999999999"}),
    ],
)
def test_huge_ledger_query_integers_are_a_clear_400(custody, path, params) -> None:
    _turn(custody, "editor")
    resp = _call(custody, "GET", path, "auditor", params=params)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert "2^62" in error["message"] or "does not exist" in error["message"]


PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x04\x00\x00\x00\x03"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("image/png", b"not an image at all"),
        ("image/png", PNG_HEAD),  # truncated after the header
        ("image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00garbage"),
        ("application/octet-stream", b"\x00\x01\x02\x03" * 64),
        ("application/json", b'{"data": '),
        ("application/json", b"[1, 2, 3]"),
        ("application/json", b'{"data": 42}'),
        ("application/json", b'{"data": "%%%"}'),
        ("application/json", json.dumps({"data": base64.b64encode(b"junk").decode()}).encode()),
        ("application/json", json.dumps({"data": base64.b64encode(PNG_HEAD).decode()}).encode()),
    ],
)
def test_bad_bytes_to_verify_are_a_clear_400(custody, content_type, body) -> None:
    resp = _call(
        custody, "POST", "/api/v1/verify", "auditor", content=body,
        headers={"content-type": content_type},
    )  # fmt: skip
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == 400 and error["details"][0]["reason"] == "BAD_VERIFY_REQUEST"
    assert "Send the image file as the body" in error["message"]
    assert "Error" not in error["message"] and "Traceback" not in error["message"]
