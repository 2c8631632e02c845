"""Nothing private in clear at rest or in logs (issue 14, item 6).

A real ``custody serve`` (uvicorn, access log on) takes a run of requests whose keys travel as
``?key=``; afterwards no log line holds a key, and neither the database files nor any other state
file holds a prompt or a key. Prompts live only in the blob store (0600, erasable, the content of
record by design); every row of every table, on SQLite and PostgreSQL, is free of them after
turns on every route that carries a prompt. Decision inputs are commitments on both databases
(migration 0004 turns old clear-text rows into commitments) and replay still opens them. State
files are created 0600 and their directories 0700 whatever the umask.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import text

from governance.auth.keys import create_key
from governance.logredact import KeyRedactingFilter, redact
from governance.policy.replay import load_recorded_inputs
from governance.settings import Settings
from governance.state import open_engine
from storage.blobs import Commitments, open_blob_store
from storage.db import alembic_config, make_engine, migrate
from tests.conftest import start_custody

MARK = "zebracorn"  # in every prompt of the run; must appear in no log and no database file
GENERATE = "/v1beta/models/gemini-2.5-flash-image:generateContent"
REPO = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _text(prompt: str, image: bytes | None = None) -> dict[str, object]:
    parts: list[dict[str, object]] = [{"text": prompt}]
    if image is not None:
        parts.insert(
            0, {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(image).decode()}}
        )
    return {"contents": [{"role": "user", "parts": parts}]}


def _serve(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "governance.cli", *args],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _wait(base: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    for _ in range(300):
        try:
            httpx.get(base + "/healthz", timeout=2)
            return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{base} never answered")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path, Path, dict[str, str]]]:
    """``custody serve --access-log`` in a subprocess, in front of ``custody emulator`` in another
    (as in production: the in-process emulator reconfigures uvicorn's loggers, see the report),
    their output in files outside the data dir."""
    data = tmp_path / "state"
    settings = Settings(data_dir=data)
    engine = open_engine(settings, create=True)
    keys = {
        role: create_key(engine, tenant="acme", actor=f"{role}@acme", roles=[role])
        for role in ("editor", "auditor")
    }
    engine.dispose()
    keys["upstream"] = "upstream_key_Qm9vYmFy"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTODY_", "GEMINI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    upstream_port, port = _free_port(), _free_port()
    upstream_log = tmp_path / "emulator.log"
    emulator = _serve(
        ["emulator", "--port", str(upstream_port), "--api-key", keys["upstream"]], env, upstream_log
    )
    gateway_env = {
        **env,
        "CUSTODY_DATA_DIR": str(data),
        "CUSTODY_CHECKPOINT_EVERY_MS": "200",
        "CUSTODY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "CUSTODY_UPSTREAM_API_KEY": keys["upstream"],
    }
    log_path = tmp_path / "server.log"
    gateway = _serve(["serve", "--port", str(port), "--access-log"], gateway_env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"http://127.0.0.1:{upstream_port}", emulator, upstream_log)
        _wait(base, gateway, log_path)
        yield base, data, log_path, keys
    finally:
        for proc in (gateway, emulator):
            proc.terminate()
            proc.wait(timeout=60)


def test_a_full_run_leaves_no_prompt_or_key_in_clear(served, photo_bytes) -> None:
    base, data, log_path, keys = served
    editor, auditor = keys["editor"], keys["auditor"]
    wrong = editor[:-6] + "XXXXXX"
    runs = [
        ("POST", GENERATE, editor, _text(f"paint the lighthouse vermilion {MARK}"), 200),
        ("POST", GENERATE, editor, _text(f"remove the watermark {MARK}"), 403),
        ("POST", GENERATE, editor, _text(f"a teal sofa {MARK}", photo_bytes["sample1.png"]), 200),
        ("POST", GENERATE, wrong, _text(f"a red bicycle {MARK}"), 403),
        ("GET", "/api/v1/ledger/entries", auditor, None, 200),
        ("GET", "/api/v1/ledger/checkpoint", auditor, None, 200),
        ("GET", "/metrics", auditor, None, 200),
        ("GET", "/api/v1/ledger/entries", editor, None, 403),
    ]
    for method, path, key, body, expected in runs:
        resp = httpx.request(method, base + path, params={"key": key}, json=body, timeout=120)
        assert resp.status_code == expected, f"{method} {path}: {resp.text[:300]}"

    # While the server runs: its database, WAL and SHM files, keys and blobs are private.
    db = data / "custody.db"
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), data / "ledger-note.key"):
        assert path.exists() and _mode(path) == 0o600, path
    for key_file in (data / "pki").glob("*.key"):
        assert _mode(key_file) == 0o600, key_file
    blobs = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    assert blobs and all(_mode(p) == 0o600 for p in blobs)
    for folder in [data, *(p for p in data.rglob("*") if p.is_dir())]:
        assert _mode(folder) == 0o700, folder

    log_text = log_path.read_text()
    assert "key=[redacted]" in log_text, "the access log did not log the requests"
    # ck_<key id>_<secret>: the secret itself may hold "_" (token_urlsafe), so split from the left.
    secrets = [k.split("_", 2)[2] for k in (editor, auditor, wrong)] + [keys["upstream"]]
    for secret in secrets:
        assert secret not in log_text
    assert MARK not in log_text

    state_files = [p for p in data.rglob("*") if p.is_file() and "blobs" not in p.parts]
    assert db in state_files
    for path in state_files:
        raw = path.read_bytes()
        assert MARK.encode() not in raw, f"a prompt in clear in {path}"
        for secret in secrets:
            assert secret.encode() not in raw, f"an API key in clear in {path}"


def test_the_redaction_filter_rewrites_messages_and_arguments() -> None:
    path = "/v1/models/m:generateContent?alt=sse&key=ck_abc_SECRET"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", path, "1.1", 200), None,
    )  # fmt: skip
    assert KeyRedactingFilter().filter(record)
    assert record.args[2] == "/v1/models/m:generateContent?alt=sse&key=[redacted]"  # type: ignore[index]
    assert "SECRET" not in record.getMessage()
    assert redact("GET /x?api_key=s3cr3t&y=1 url='http://h/?KEY=abc'") == (
        "GET /x?api_key=[redacted]&y=1 url='http://h/?KEY=[redacted]'"
    )


def test_state_files_are_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        url = f"sqlite:///{tmp_path / 'new' / 'deep' / 'custody.db'}"
        migrate(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO api_keys (key_id, secret_sha256, tenant, actor, roles, label,"
                     " created_ms) VALUES ('k', 's', 't', 'a', 'editor', '', 1)")
            )  # fmt: skip
        db = tmp_path / "new" / "deep" / "custody.db"
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert _mode(path) == 0o600, path
        assert _mode(db.parent) == 0o700 and _mode(db.parent.parent) == 0o700
        engine.dispose()

        legacy = tmp_path / "legacy.db"  # made by an older Custody, world-readable
        legacy.touch(mode=0o644)
        os.chmod(legacy, 0o644)
        migrate(f"sqlite:///{legacy}")
        assert _mode(legacy) == 0o600
    finally:
        os.umask(old)


@pytest.mark.pg_at_head
def test_decision_inputs_are_commitments_that_replay_opens(db_url: str, tmp_path: Path) -> None:
    running = start_custody(tmp_path / "custody", db_url)
    try:
        for prompt in (f"paint the lighthouse vermilion {MARK}", f"remove the watermark {MARK}"):
            httpx.post(
                running.base_url + GENERATE,
                json=_text(prompt),
                headers={"x-goog-api-key": running.keys["editor"]},
                timeout=60,
            )
        with running.services.engine.connect() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(text("SELECT * FROM decision_inputs")).mappings().all()
        assert len(rows) == 3  # request + response of the allowed turn, request of the denied
        assert all(
            set(r) == {"id", "turn_id", "stage", "input_commitment", "created_ms"} for r in rows
        )
        assert MARK not in repr(rows)
        settings = running.services.settings  # type: ignore[attr-defined]
        inputs = load_recorded_inputs(settings, 10)
        prompts = [doc["request"]["prompt"] for _, doc in inputs]
        assert prompts == [f"paint the lighthouse vermilion {MARK}", f"remove the watermark {MARK}"]
    finally:
        running.stop()


def test_migration_0004_turns_clear_inputs_into_commitments(db_url: str, tmp_path: Path) -> None:
    command.upgrade(alembic_config(db_url), "0003_decision_inputs")
    engine = make_engine(db_url)
    blobs = open_blob_store("file", data_dir=tmp_path, engine=engine)
    kept = b'{"request":{"prompt":"' + MARK.encode() + b'"}}'
    commitment = Commitments(engine, blobs).put_committed(kept).commitment
    with engine.begin() as conn:
        for turn, raw in (("t-kept", kept), ("t-orphan", b'{"request":{"prompt":"lost"}}')):
            conn.execute(
                text("INSERT INTO decision_inputs (turn_id, stage, input_json, created_ms)"
                     " VALUES (:t, 'request', :j, 1)"),
                {"t": turn, "j": raw.decode()},
            )  # fmt: skip
    engine.dispose()
    migrate(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM decision_inputs")).mappings().all()
    engine.dispose()
    assert [dict(r) for r in rows] == [
        {
            "id": rows[0]["id"],
            "turn_id": "t-kept",
            "stage": "request",
            "created_ms": 1,
            "input_commitment": commitment,
        }
    ]


def _rows_holding(engine: Any, needle: str) -> list[str]:
    """``table.column`` of every value in every table that holds ``needle`` (text, or bytes
    as UTF-8 or UTF-16)."""
    from sqlalchemy import inspect

    raw = needle.encode()
    found = []
    tables = inspect(engine).get_table_names()
    assert "ledger_entries" in tables and "decision_inputs" in tables, tables
    with engine.connect() as conn:
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')).mappings():
                for column, value in row.items():
                    if isinstance(value, memoryview):
                        value = bytes(value)
                    if isinstance(value, bytes):
                        hit = raw in value or needle.encode("utf-16-le") in value
                    else:
                        hit = needle in str(value)
                    if hit:
                        found.append(f"{table}.{column}")
    return found


@pytest.mark.pg_at_head
def test_no_table_holds_a_prompt_in_clear_on_either_database(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The full-run check above reads SQLite's files; this one reads every row of every table,
    on SQLite and on PostgreSQL, after turns on every route that carries a prompt: released,
    denied and refused (400) generateContent, both stream forms, countTokens, a system
    instruction, a text attachment, an oversized prompt and a native session turn. Nor does
    any log record the gateway emits hold the prompt."""
    caplog.set_level(logging.DEBUG)
    running = start_custody(tmp_path / "custody", db_url)
    try:
        base, key = running.base_url, running.keys["editor"]
        attachment = base64.b64encode(f"notes: {MARK}".encode()).decode()
        image = base64.b64encode(_png_bytes()).decode()
        with_image = {"inlineData": {"mimeType": "image/png", "data": image}}
        runs: list[tuple[str, dict[str, Any], int]] = [
            (GENERATE, _text(f"paint the lighthouse vermilion {MARK}"), 200),
            (GENERATE, _text(f"remove the watermark {MARK}"), 403),
            (
                GENERATE.replace("generateContent", "streamGenerateContent?alt=sse"),
                _text(MARK),
                200,
            ),
            (GENERATE.replace("generateContent", "streamGenerateContent"), _text(MARK), 200),
            (GENERATE.replace("generateContent", "countTokens"), _text(MARK), 200),
            (GENERATE, {"systemInstruction": {"parts": [{"text": MARK}]}, **_text("go")}, 200),
            (
                GENERATE,
                {
                    "contents": [
                        {
                            "role": "user",
                            "parts": [
                                with_image,
                                {"inlineData": {"mimeType": "text/plain", "data": attachment}},
                                {"text": "make it teal"},
                            ],
                        }
                    ]
                },
                200,
            ),
            (GENERATE, {"contents": [{"parts": [{"text": MARK, "hidden": MARK}]}]}, 400),
            (GENERATE, _text(f"{MARK} " * 40_000), 400),
        ]
        for path, body, expected in runs:
            resp = httpx.post(base + path, json=body, headers={"x-goog-api-key": key}, timeout=120)
            assert resp.status_code == expected, (path, resp.status_code, resp.text[:300])
        with httpx.Client(base_url=base, headers={"x-goog-api-key": key}, timeout=120) as api:
            session = api.post("/api/v1/sessions", json={}).json()["session"]
            version = api.post(
                f"/api/v1/sessions/{session}/images",
                json={"data": image, "mime_type": "image/png", "source": "camera"},
            ).json()["version"]
            turn = api.post(
                f"/api/v1/sessions/{session}/turns",
                json={"instruction": f"make it teal {MARK}", "targets": [{"version": version}]},
            ).json()
        assert turn["results"][0]["status"] == "released", turn
        engine = running.services.engine  # type: ignore[attr-defined]
        assert engine.dialect.name == ("sqlite" if db_url.startswith("sqlite") else "postgresql")
        assert "ledger_entries.leaf" in _rows_holding(engine, "editor@acme"), "the scan reads"
        assert not _rows_holding(engine, MARK), "a prompt in clear in the database"
        settings = running.services.settings  # type: ignore[attr-defined]
        assert len(load_recorded_inputs(settings, 50)) >= 7, "the turns' inputs were recorded"
        data = tmp_path / "custody"
        for path in (p for p in data.rglob("*") if p.is_file() and "blobs" not in p.parts):
            assert MARK.encode() not in path.read_bytes(), f"a prompt in clear in {path}"
    finally:
        running.stop()
    assert "denied at request" in caplog.text, "the gateway's log records were captured"
    assert MARK not in caplog.text, [
        r.getMessage() for r in caplog.records if MARK in r.getMessage()
    ]


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (90, 120, 200)).save(buf, "PNG")
    return buf.getvalue()
