"""Key lifecycle through the CLI beside a running gateway: revoke, rotate, expire, list.

Every key event is a ledger event without the secret, and a revoke done by another process is
refused on the very next request, on every kind of route.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from google import genai
from google.genai import errors, types

from governance.auth.keys import KeyRing, parse_key
from governance.auth.lifecycle import KeyLifecycle, Operator
from tests.keys_helpers import call, cli, cli_ok, events_of, gateway, leaves, new_key, verify_ok

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"


def _sdk(running, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=running.base_url))


def _generate(client: genai.Client) -> None:
    response = client.models.generate_content(model=MODEL, contents="a red bicycle")
    assert response.candidates


def _refused_everywhere(running, key: str, client: genai.Client, word: str) -> None:
    with pytest.raises(errors.ClientError) as caught:
        _generate(client)
    assert caught.value.code == 403 and word in str(caught.value.message)
    for path in ("/api/v1/ledger/checkpoint", "/metrics"):
        resp = call(running, "GET", path, key)
        assert resp.status_code == 403, path
        assert resp.json()["error"]["status"] == "PERMISSION_DENIED"
        assert word in resp.json()["error"]["message"]


def _assert_no_secret(running, *keys: str) -> None:
    for key in keys:
        parsed = parse_key(key)
        assert parsed is not None
        secret = parsed[1]
        needles = [key, secret, hashlib.sha256(secret.encode()).hexdigest()]
        for leaf in leaves(running):
            for needle in needles:
                assert needle.encode() not in leaf


@pytest.fixture()
def served(tmp_path: Path, db_url: str):
    with gateway(tmp_path / "custody", db_url) as running:
        yield running


def test_a_cli_revoke_is_refused_at_once_on_gemini_native_and_metrics_routes(served) -> None:
    key = new_key(served, "--role", "admin", "--tenant", "acme", "--label", "ops laptop")
    client = _sdk(served, key)
    _generate(client)
    assert call(served, "GET", "/api/v1/ledger/checkpoint", key).status_code == 200
    assert call(served, "GET", "/metrics", key).status_code == 200

    key_id = parse_key(key)[0]
    out = cli_ok(served, "keys", "revoke", key_id, "--reason", "laptop stolen", "--by", "dpo")
    assert "refused now" in out
    _refused_everywhere(served, key, client, "revoked")

    (created,) = events_of(served, "key.created")[-1:]
    (revoked,) = events_of(served, "key.revoked")
    assert created["body"]["key"]["id"] == key_id
    assert created["body"]["key"]["label"] == "ops laptop"
    assert revoked["body"]["key"]["id"] == key_id
    assert revoked["body"]["reason"] == "laptop stolen"
    assert revoked["body"]["by"] == {"actor": "dpo", "via": "cli", "key": None, "tenant": None}
    assert revoked["tenant"] == "acme"
    again = cli(served, "keys", "revoke", key_id)
    assert again.returncode == 2 and "already revoked" in again.stderr
    verify_ok(served)
    _assert_no_secret(served, key)


def test_rotate_with_grace_keeps_the_old_key_until_the_grace_ends(served) -> None:
    old = new_key(served, "--role", "editor", "--tenant", "acme", "--expires-in", "30d")
    old_id = parse_key(old)[0]
    out = cli_ok(served, "keys", "rotate", old_id, "--grace", "5").strip().splitlines()
    new = out[-1]
    assert parse_key(new) and new != old, "the new key is alone on the last line"
    old_client, new_client = _sdk(served, old), _sdk(served, new)
    _generate(new_client)

    listed = {k["id"]: k for k in json.loads(cli_ok(served, "keys", "list", "--json"))}
    new_id = parse_key(new)[0]
    assert listed[new_id]["rotated_from"] == old_id and listed[new_id]["actor"] == "editor@acme"
    assert listed[new_id]["roles"] == ["editor"] and listed[new_id]["expires_ms"]
    try:
        _generate(old_client)  # inside its grace period the old key still works
    except errors.ClientError:  # ... unless the grace passed already on a loaded machine
        assert time.time() * 1000 >= listed[old_id]["revoked_ms"], "refused inside its grace"
    while time.time() * 1000 <= listed[old_id]["revoked_ms"]:
        time.sleep(0.2)
    _refused_everywhere(served, old, old_client, "revoked")
    _generate(new_client)

    (rotated,) = events_of(served, "key.rotated")
    assert rotated["body"]["key"]["id"] == old_id and rotated["body"]["rotated_to"] == new_id
    assert rotated["body"]["grace_ms"] == 5000
    created = [e for e in events_of(served, "key.created") if e["body"]["key"]["id"] == new_id]
    assert created[0]["body"]["rotated_from"] == old_id

    now = cli_ok(served, "keys", "rotate", new_id).strip().splitlines()[-1]
    _refused_everywhere(served, new, new_client, "revoked")
    _generate(_sdk(served, now))
    verify_ok(served)
    _assert_no_secret(served, old, new, now)


def test_an_expired_key_is_refused_and_its_expiry_recorded_once(tmp_path, db_url) -> None:
    # Two gateways on one database both run the expiry job: one key.expired is written.
    with gateway(tmp_path / "custody", db_url) as first, gateway(tmp_path / "custody", db_url):
        key = new_key(first, "--role", "editor", "--tenant", "acme", "--expires-in", "3s")
        key_id = parse_key(key)[0]
        expires = json.loads(cli_ok(first, "keys", "list", "--json", "--tenant", "acme"))
        (info,) = [k for k in expires if k["id"] == key_id]
        while time.time() * 1000 <= info["expires_ms"]:
            time.sleep(0.2)
        _refused_everywhere(first, key, _sdk(first, key), "expired")
        deadline = time.monotonic() + 60
        while not events_of(first, "key.expired") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.5)  # more ticks of both jobs: still one event
        expired = events_of(first, "key.expired")
        assert [e["body"]["key"]["id"] for e in expired] == [key_id]
        assert expired[0]["body"]["by"]["actor"] == "custody"
        listed = json.loads(cli_ok(first, "keys", "list", "--json"))
        assert {k["id"]: k["state"] for k in listed}[key_id] == "expired"
        verify_ok(first)
        _assert_no_secret(first, key)


def test_keys_list_shows_no_secret_and_create_says_an_admin(served) -> None:
    out = cli_ok(served, "keys", "create", "--role", "admin", "--tenant", "acme")
    assert out.startswith("Created an admin key")
    assert cli_ok(served, "keys", "create", "--role", "auditor", "--tenant", "acme").startswith(
        "Created an auditor key"
    )
    assert cli_ok(served, "keys", "create", "--role", "editor", "--tenant", "acme").startswith(
        "Created an editor key"
    )
    reviewer = cli_ok(served, "keys", "create", "--role", "reviewer", "--tenant", "globex")
    assert reviewer.startswith("Created a reviewer key")
    key = reviewer.strip().splitlines()[-1]
    _generate(_sdk(served, served.keys["editor"]))  # last used is recorded in the background
    table = cli_ok(served, "keys", "list")
    listed = json.loads(cli_ok(served, "keys", "list", "--json", "--tenant", "globex"))
    assert {k["tenant"] for k in listed} == {"globex"}
    for text_ in (table, json.dumps(listed)):
        assert parse_key(key)[1] not in text_ and "secret" not in text_
    assert set(listed[0]) >= {"id", "actor", "roles", "label", "state", "created_ms", "expires_ms"}
    dated = new_key(
        served, "--role", "editor", "--tenant", "acme", "--expires", "2031-01-01T00:00Z"
    )
    (info,) = [
        k
        for k in json.loads(cli_ok(served, "keys", "list", "--json"))
        if k["id"] == (parse_key(dated)[0])
    ]
    assert info["expires_ms"] == 1924992000000 and info["state"] == "active"
    bad = cli(served, "keys", "create", "--role", "editor", "--tenant", "acme", "--expires-in", "x")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    editor_id = parse_key(served.keys["editor"])[0]
    # Wait for the background write in-process (a CLI process per poll cost a minute), then
    # read it through the CLI once.
    keys = KeyLifecycle(served.services.engine, served.services.ledger)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if {k.key_id: k.last_used_ms for k in keys.list_keys()}[editor_id]:
            break
        time.sleep(0.5)
    listed = json.loads(cli_ok(served, "keys", "list", "--json"))
    used = {k["id"]: k["last_used_ms"] for k in listed}
    assert used[editor_id], "the gateway stores when a key was last used"


def test_the_key_cache_is_bounded_and_unknown_ids_never_enter_it(served) -> None:
    engine, ledger = served.services.engine, served.services.ledger
    ring = KeyRing(engine, cache_size=4)
    for i in range(50):
        assert ring.identify(f"ck_{i:016x}_nosuchsecret") == "unknown"
    assert ring.cached == 0
    keys = KeyLifecycle(engine, ledger)
    by = Operator(actor="test", via="cli")
    made = [keys.create(tenant="acme", actor=f"a{i}", roles=["editor"], by=by) for i in range(10)]
    for m in made:
        assert ring.authenticate(m.key) is not None
    assert ring.cached == 4
    keys.revoke(made[-1].info.key_id, by=by)
    assert ring.identify(made[-1].key) == "revoked", "a cached key is refused once revoked"
    assert ring.identify(made[-1].key[:-1] + "x") == "unknown", "a wrong secret is unknown"
    ring.close()
