"""The key admin API (``/api/v1/keys``) is tenant-scoped: tenant B's admin never sees or touches
tenant A's keys; an operator manages every tenant; every step is in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance.auth.keys import parse_key
from tests.keys_helpers import call, events_of, gateway, leaves, new_key, verify_ok

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


@pytest.fixture()
def served(tmp_path: Path, db_url: str):
    with gateway(tmp_path / "custody", db_url) as running:
        yield running


def _ids(resp) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {k["id"] for k in resp.json()["keys"]}


def _error(resp, code: int, reason: str) -> str:
    assert resp.status_code == code, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["details"][0]["reason"] == reason
    return str(error["message"])


def test_admins_are_confined_to_their_tenant_and_operators_are_not(served) -> None:
    acme_admin = served.keys["admin"]
    operator = new_key(served, "--role", "operator", "--tenant", "custody")
    made = call(
        served, "POST", "/api/v1/keys", operator, json={"tenant": "globex", "roles": ["admin"]}
    )
    assert made.status_code == 200, made.text
    globex_admin = made.json()["key"]
    assert made.json()["info"]["tenant"] == "globex" and "secret" not in made.text.replace(
        globex_admin, ""
    )

    acme_ids = _ids(call(served, "GET", "/api/v1/keys", acme_admin))
    globex_ids = _ids(call(served, "GET", "/api/v1/keys", globex_admin))
    assert acme_ids and globex_ids and not acme_ids & globex_ids
    assert acme_ids | globex_ids <= _ids(call(served, "GET", "/api/v1/keys", operator))
    assert _ids(call(served, "GET", "/api/v1/keys?tenant=acme", operator)) == acme_ids
    _error(call(served, "GET", "/api/v1/keys?tenant=acme", globex_admin), 403, "TENANT_SCOPE")

    acme_editor_id = parse_key(served.keys["editor"])[0]
    for action in ("revoke", "rotate"):
        resp = call(served, "POST", f"/api/v1/keys/{acme_editor_id}/{action}", globex_admin)
        _error(resp, 404, "KEY_NOT_FOUND")
    resp = call(
        served, "POST", "/api/v1/keys", globex_admin, json={"tenant": "acme", "roles": ["editor"]}
    )
    _error(resp, 403, "TENANT_SCOPE")
    resp = call(served, "POST", "/api/v1/keys", globex_admin, json={"roles": ["operator"]})
    _error(resp, 403, "ROLE_NOT_GRANTABLE")
    operator_id = parse_key(operator)[0]
    resp = call(served, "POST", f"/api/v1/keys/{operator_id}/revoke", acme_admin)
    assert resp.status_code in (403, 404)
    for role in ("editor", "auditor", "reviewer"):
        _error(call(served, "GET", "/api/v1/keys", served.keys[role]), 403, "ROLE_REQUIRED")

    # The editor of acme still works: nothing the globex admin tried touched it.
    assert call(served, "GET", "/api/v1/keys", acme_admin).status_code == 200
    resp = call(
        served,
        "POST",
        f"/api/v1/keys/{acme_editor_id}/revoke",
        operator,
        json={"reason": "offboarded"},
    )
    assert resp.status_code == 200 and resp.json()["info"]["state"] == "revoked"
    (revoked,) = events_of(served, "key.revoked")
    assert revoked["body"]["by"]["key"] == operator_id and revoked["body"]["reason"] == "offboarded"
    assert revoked["tenant"] == "acme"


def test_an_admin_creates_rotates_and_revokes_its_tenants_keys(served) -> None:
    admin = served.keys["admin"]
    resp = call(
        served,
        "POST",
        "/api/v1/keys",
        admin,
        json={"roles": ["editor"], "label": "ci", "expires_in": "30d"},
    )
    assert resp.status_code == 200, resp.text
    key, info = resp.json()["key"], resp.json()["info"]
    assert info["tenant"] == "acme" and info["actor"] == "editor@acme" and info["expires_ms"]
    body = b'{"contents":[{"role":"user","parts":[{"text":"a red bicycle"}]}]}'
    gemini = "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert call(served, "POST", gemini, key, content=body).status_code == 200

    resp = call(
        served, "POST", f"/api/v1/keys/{info['id']}/rotate", admin, json={"grace_seconds": 0}
    )
    assert resp.status_code == 200, resp.text
    new_key_, new_info = resp.json()["key"], resp.json()["info"]
    assert new_info["rotated_from"] == info["id"] and new_info["label"] == "ci"
    refused = call(served, "POST", gemini, key, content=body)
    assert "revoked" in _error(refused, 403, "API_KEY_INVALID")
    assert call(served, "POST", gemini, new_key_, content=body).status_code == 200

    resp = call(
        served, "POST", f"/api/v1/keys/{new_info['id']}/revoke", admin, json={"reason": "done"}
    )
    assert resp.status_code == 200
    _error(call(served, "POST", gemini, new_key_, content=body), 403, "API_KEY_INVALID")
    again = call(served, "POST", f"/api/v1/keys/{new_info['id']}/revoke", admin)
    _error(again, 409, "KEY_REVOKED")
    _error(
        call(served, "POST", "/api/v1/keys", admin, json={"roles": ["wizard"]}),
        400,
        "BAD_KEY_REQUEST",
    )
    _error(
        call(served, "POST", "/api/v1/keys", admin, json={"roles": ["editor"], "expires": "soon"}),
        400,
        "BAD_EXPIRY",
    )

    types_ = [e["type"] for e in events_of(served, "key.created")]
    assert len(types_) == 2
    assert len(events_of(served, "key.rotated")) == 1 and len(events_of(served, "key.revoked")) == 1
    for leaf in leaves(served):
        for k in (key, new_key_):
            assert parse_key(k)[1].encode() not in leaf
    verify_ok(served)
