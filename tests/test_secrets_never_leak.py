"""Secrets never leave where they belong: a full run, then every output searched for every secret.

The run is a real ``custody serve --access-log --log-level debug`` in front of ``custody
emulator`` holding an upstream key: released, denied, upstream-refused and malformed turns; keys
sent in the header, as ``?key=`` and as Bearer; a wrong key; review decisions (one refused); a
console sign-in, its pages and a failed sign-in; a metrics scrape; ledger exports (entries,
checkpoint, the CLI's checkpoint). The secrets: the upstream key, every API key and its secret
part, the console password and session cookie, every private key the installation holds (C2PA
signing PEM, ledger note key). Each is searched raw, in base64 (standard, URL-safe, unpadded) and
in hex in: the gateway's log, every row of every table, every file of the data directory but the
key files themselves (database, WAL, blobs), every response body and header (but the sign-in's
own Set-Cookie), the signed images (their C2PA manifests), /metrics and the exports.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from governance.auth.keys import create_key, parse_key
from governance.settings import Settings
from governance.state import open_engine
from tests.console_helpers import PASSWORD, ConsoleClient, make_account
from tests.review_helpers import open_task
from tests.test_at_rest import REPO, _free_port, _serve, _text, _wait

GENERATE = "/v1beta/models/gemini-2.5-flash-image:generateContent"


def encodings(secret: bytes) -> set[bytes]:
    """``secret`` raw, in base64 (standard, URL-safe, unpadded) and in hex (both cases)."""
    std = base64.b64encode(secret)
    url = base64.urlsafe_b64encode(secret)
    hexed = binascii.hexlify(secret)
    return {secret, std, url, std.rstrip(b"="), url.rstrip(b"="), hexed, hexed.upper()}


def private_key_secrets(data: Path) -> tuple[dict[str, bytes], set[Path]]:
    """Every private key under ``data`` (its DER and its PEM body) and the files holding them."""
    from cryptography.hazmat.primitives import serialization

    found: dict[str, bytes] = {}
    holders: set[Path] = set()
    for path in data.rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if b"PRIVATE KEY-----" in raw:
            holders.add(path)
            key = serialization.load_pem_private_key(raw, password=None)
            der = key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            found[f"signing key {path.name} (DER)"] = der
            body = b"".join(ln for ln in raw.splitlines() if ln and not ln.startswith(b"-----"))
            found[f"signing key {path.name} (PEM body)"] = body[:64]
        elif path.name == "ledger-note.key":
            holders.add(path)
            text = raw.strip()
            found["ledger note key"] = text
            found["ledger note key (secret part)"] = text.rsplit(b"+", 1)[-1]
    return found, holders


@pytest.fixture()
def installation(tmp_path: Path):
    data = tmp_path / "state"
    engine = open_engine(Settings(data_dir=data), create=True)
    keys = {
        role: create_key(engine, tenant="acme", actor=f"{role}@acme", roles=[role])
        for role in ("editor", "auditor", "admin", "reviewer")
    }
    keys["operator"] = create_key(engine, tenant="custody", actor="ops@custody", roles=["operator"])
    engine.dispose()
    upstream_key = "AIzaSyUpstream" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTODY_", "GEMINI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    upstream_port, port = _free_port(), _free_port()
    emulator_log = tmp_path / "emulator.log"
    emulator = _serve(
        ["emulator", "--port", str(upstream_port), "--api-key", upstream_key], env, emulator_log
    )
    gateway_env = {
        **env,
        "CUSTODY_DATA_DIR": str(data),
        "CUSTODY_CHECKPOINT_EVERY_MS": "200",
        "CUSTODY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "CUSTODY_UPSTREAM_API_KEY": upstream_key,
    }
    log_path = tmp_path / "server.log"
    gateway = _serve(
        ["serve", "--port", str(port), "--access-log", "--log-level", "debug"],
        gateway_env,
        log_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"http://127.0.0.1:{upstream_port}", emulator, emulator_log)
        _wait(base, gateway, log_path)
        yield base, data, log_path, keys, upstream_key, gateway_env
    finally:
        for proc in (gateway, emulator):
            proc.terminate()
            proc.wait(timeout=60)


def test_no_secret_appears_in_any_output(installation, photo_bytes) -> None:
    base, data, log_path, keys, upstream_key, gateway_env = installation
    editor, auditor, operator = keys["editor"], keys["auditor"], keys["operator"]
    outputs: dict[str, bytes] = {}

    def keep(label: str, resp: httpx.Response, *, skip_cookie: bool = False) -> None:
        headers = b"\n".join(
            f"{k}: {v}".encode()
            for k, v in resp.headers.multi_items()
            if not (skip_cookie and k.lower() == "set-cookie")
        )
        outputs[f"response {label}"] = headers + b"\n\n" + resp.content

    photo = photo_bytes["sample1.png"]
    turns = [
        ("header", {"x-goog-api-key": editor}, {}, _text("a teal sofa", photo), 200),
        ("query", {}, {"key": editor}, _text("paint the lighthouse vermilion"), 200),
        ("bearer", {"authorization": f"Bearer {editor}"}, {}, _text("a red bicycle"), 200),
        ("denied", {"x-goog-api-key": editor}, {}, _text("remove the watermark"), 403),
        ("upstream refused", {"x-goog-api-key": editor}, {}, _text("something forbidden"), None),
        ("wrong key", {"x-goog-api-key": editor[:-6] + "XXXXXX"}, {}, _text("hi"), 403),
        ("wrong key in query", {}, {"key": editor[:-4] + "ZZZZ"}, _text("hi"), 403),
        ("bad base64", {"x-goog-api-key": editor}, {}, _bad_image(), 400),
    ]
    for label, headers, params, body, expected in turns:
        resp = httpx.post(base + GENERATE, headers=headers, params=params, json=body, timeout=120)
        assert expected is None or resp.status_code == expected, (label, resp.text[:300])
        keep(label, resp)
        if resp.status_code == 200:
            candidates = resp.json().get("candidates") or [{}]
            for part in candidates[0].get("content", {}).get("parts", []):
                if "inlineData" in part:  # the signed image, its C2PA manifest inside
                    outputs[f"signed image ({label})"] = base64.b64decode(
                        part["inlineData"]["data"]
                    )

    # Console: an account signs in, reads its pages, signs out.
    account_engine_settings = Settings(data_dir=data)
    running = _Installation(account_engine_settings)
    try:
        make_account(running, "rita", "reviewer")  # type: ignore[arg-type]
        tasks = [open_task(running) for _ in range(2)]  # type: ignore[arg-type]
    finally:
        running.close()
    member = httpx.post(
        base + "/api/v1/review-groups/reviewers/members",
        json={"actor": "reviewer@acme"},
        headers={"x-goog-api-key": keys["admin"]},
    )
    assert member.status_code == 200, member.text
    keep("group membership", member)
    reviewer = keys["reviewer"]
    for label, method, path, body, expected in [
        ("review queue", "GET", "/api/v1/reviews", None, 200),
        ("review task", "GET", f"/api/v1/reviews/{tasks[0].task_id}", None, 200),
        (
            "review approve",
            "POST",
            f"/api/v1/reviews/{tasks[0].task_id}/decision",
            {"decision": "approve", "comment": "fine", "shown_digest": tasks[0].shown_digest},
            200,
        ),
        (
            "review on other content",
            "POST",
            f"/api/v1/reviews/{tasks[1].task_id}/decision",
            {"decision": "approve", "comment": "", "shown_digest": "0" * 64},
            409,
        ),
    ]:
        resp = httpx.request(
            method, base + path, json=body, headers={"x-goog-api-key": reviewer}, timeout=60
        )
        assert resp.status_code == expected, (label, resp.text[:300])
        keep(label, resp)
    console = ConsoleClient(_Base(base))  # type: ignore[arg-type]
    signed_in = console.sign_in("rita")
    assert signed_in.status_code in (302, 303), signed_in.text[:300]
    keep("console sign-in", signed_in, skip_cookie=True)
    cookies = {name: value for name, value in console.http.cookies.items()}
    assert cookies, "the sign-in set a session cookie"
    for path in ("/console/", "/console/ledger", "/console/reviews"):
        keep(f"console {path}", console.get(path))
    bad = console.sign_in("rita", password="not the password at all")
    keep("console failed sign-in", bad, skip_cookie=True)
    console.close()

    # Metrics and exports.
    auth = {"authorization": f"Bearer {operator}"}
    scrape = httpx.get(base + "/metrics", headers=auth)
    assert scrape.status_code == 200
    outputs["/metrics"] = scrape.content
    for path in ("/api/v1/ledger/entries", "/api/v1/ledger/checkpoint"):
        resp = httpx.get(base + path, headers={"authorization": f"Bearer {auditor}"})
        assert resp.status_code == 200, resp.text[:200]
        outputs[f"export {path}"] = resp.content
    cli = subprocess.run(
        [sys.executable, "-m", "governance.cli", "ledger", "checkpoint"],
        cwd=REPO,
        env=gateway_env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    outputs["custody ledger checkpoint"] = cli.stdout + cli.stderr

    # The secrets.
    secrets: dict[str, bytes] = {
        "upstream key": upstream_key.encode(),
        "password": PASSWORD.encode(),
    }
    for role, key in keys.items():
        secrets[f"{role} API key"] = key.encode()
        parsed = parse_key(key)
        assert parsed is not None
        secrets[f"{role} API key secret"] = parsed[1].encode()
    for name, value in cookies.items():
        secrets[f"session cookie {name}"] = value.encode()
    private, holders = private_key_secrets(data)
    assert any("signing key" in name for name in private), "the dev PKI's key was found"
    secrets.update(private)

    # Where they must not be.
    outputs["gateway log"] = log_path.read_bytes()
    assert b"GET /console/" in outputs["gateway log"], "the access log was on"
    db = data / "custody.db"
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            outputs[f"table {table}"] = repr(rows).encode() + b"".join(
                v for row in rows for v in row if isinstance(v, bytes)
            )
    for path in data.rglob("*"):
        if path.is_file() and path not in holders:
            outputs[f"file {path.relative_to(data)}"] = path.read_bytes()

    # The search finds what it looks for: each private key is found in the file that holds it.
    for holder in holders:
        held = holder.read_bytes()
        assert any(form in held for secret in private.values() for form in encodings(secret))
    assert b"key=[redacted]" in outputs["gateway log"], "the ?key= request was logged, redacted"

    leaks = [
        f"{secret_name} in {where}"
        for secret_name, secret in secrets.items()
        for form in encodings(secret)
        for where, blob in outputs.items()
        if len(form) >= 8 and form in blob
    ]
    print(f"\nsearched {len(secrets)} secrets (7 encodings each) in {len(outputs)} outputs")
    assert not leaks, sorted(set(leaks))


def _bad_image() -> dict[str, object]:
    parts = [{"inlineData": {"mimeType": "image/png", "data": "not base64!!"}}, {"text": "teal"}]
    return {"contents": [{"role": "user", "parts": parts}]}


class _Base:
    """What ``ConsoleClient`` needs of a running gateway: its base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


class _Installation:
    """What ``make_account`` needs (``services.engine`` and ``services.ledger``), opened on the
    served installation's database and ledger from this process."""

    def __init__(self, settings: Settings) -> None:
        from governance.services import build_services

        self.services = build_services(settings)

    def close(self) -> None:
        import asyncio

        asyncio.run(self.services.aclose())
