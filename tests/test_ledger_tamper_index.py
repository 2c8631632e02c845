"""Edits to what the API serves outside the leaves are caught by ``custody ledger verify``.

A real gateway (real SDK, real policy, real c2pa) writes a ledger once per database; each test
edits one value on a copy of it, with the append-only triggers dropped (as a table owner could),
and runs the CLI: it must fail and name the entry, or the table and row. On both databases.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.genai import types
from sqlalchemy import text

from storage.db import is_sqlite, make_engine
from tests.conftest import PG_ADMIN_URL, _pg_available, _skip_or_fail, start_custody

MODEL = "gemini-2.5-flash-image"


@dataclass
class Ledger:
    """A copy of a real ledger: its database URL and data directory, and the turns it holds."""

    url: str
    data_dir: Path
    released: str  # a turn released with one input image and one signed output
    failed: str  # a turn refused while parsing (turn.failed)


@dataclass
class Golden:
    url: str
    data_dir: Path
    released: str
    failed: str
    pg_name: str | None


def _write_golden(url: str, data_dir: Path, photo: bytes) -> tuple[str, str]:
    gateway = start_custody(data_dir, url)
    try:
        client = gateway.client()
        response = client.models.generate_content(  # type: ignore[attr-defined]
            model=MODEL,
            contents=[types.Part.from_bytes(data=photo, mime_type="image/jpeg"), "make it teal"],
        )
        released = response.sdk_http_response.headers["x-custody-turn"]
        client.models.generate_content(model=MODEL, contents="a lighthouse at dusk")  # type: ignore[attr-defined]
        import httpx

        bad = httpx.post(
            f"{gateway.base_url}/v1beta/models/{MODEL}:generateContent",
            content=b'{"contents": [{"parts": [{"inlineData": {"data": "@@"}}]}]}',
            headers={"x-goog-api-key": gateway.keys["editor"]},
            timeout=60,
        )
        assert bad.status_code == 400, bad.text
        failed = bad.headers["x-custody-turn"]
    finally:
        gateway.stop()
    return released, failed


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def golden(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Golden]:
    data_dir = tmp_path_factory.mktemp("golden") / "custody"
    photo = (Path(__file__).parent / "fixtures" / "photos" / "earth_apollo17.jpg").read_bytes()
    pg_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir.parent / 'custody.db'}"
    else:
        problem = _pg_available()
        if problem:
            _skip_or_fail(problem)
        import psycopg

        pg_name = f"custody_g_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{pg_name}"
    released, failed = _write_golden(url, data_dir, photo)
    try:
        yield Golden(url, data_dir, released, failed, pg_name)
    finally:
        if pg_name:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@pytest.fixture()
def ledger(golden: Golden, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh copy of the golden ledger (database and data directory) for one test."""
    data_dir = tmp_path / "custody"
    shutil.copytree(golden.data_dir, data_dir)
    if golden.pg_name is None:
        path = tmp_path / "custody.db"
        source = sqlite3.connect(golden.url.removeprefix("sqlite:///"))
        target = sqlite3.connect(path)
        source.backup(target)
        source.close()
        target.close()
        yield Ledger(f"sqlite:///{path}", data_dir, golden.released, golden.failed)
        return
    import psycopg

    name = f"custody_c_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{golden.pg_name}"')
    try:
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield Ledger(f"{base}/{name}", data_dir, golden.released, golden.failed)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _verify(ledger: Ledger) -> dict[str, object]:
    env = {
        **os.environ,
        "CUSTODY_DATABASE_URL": ledger.url,
        "CUSTODY_DATA_DIR": str(ledger.data_dir),
    }
    out = subprocess.run(
        [sys.executable, "-m", "governance.cli", "ledger", "verify", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    report = json.loads(out.stdout)
    assert (out.returncode == 0) == report["ok"], out.stderr
    return report


def _raw(url: str, *statements: str, params: dict[str, object] | None = None) -> None:
    """Run SQL as the table owner, around the triggers."""
    engine = make_engine(url, immediate=False)
    with engine.begin() as conn:
        if is_sqlite(url):
            for name in conn.execute(text("SELECT name FROM sqlite_master WHERE type='trigger'")):
                conn.execute(text(f"DROP TRIGGER {name[0]}"))
        else:
            conn.execute(text("SET session_replication_role = replica"))
        for sql in statements:
            conn.execute(text(sql), params or {})
    engine.dispose()


def _one(url: str, sql: str, params: dict[str, object] | None = None) -> tuple[object, ...]:
    engine = make_engine(url, immediate=False)
    with engine.connect() as conn:
        row = tuple(conn.execute(text(sql), params or {}).first() or ())
    engine.dispose()
    assert row, sql
    return row


def _entry(ledger: Ledger, type_: str) -> int:
    (idx,) = _one(
        ledger.url,
        "SELECT idx FROM ledger_entries WHERE turn_id = :t AND type = :y ORDER BY idx",
        {"t": ledger.released, "y": type_},
    )
    return int(idx)  # type: ignore[call-overload]


def _faults(report: dict[str, object]) -> list[dict[str, object]]:
    assert not report["ok"], "verify must fail"
    return report["faults"]  # type: ignore[return-value]


def test_the_untouched_copy_verifies_with_every_turn_checked(ledger: Ledger) -> None:
    report = _verify(ledger)
    assert report["ok"], report["faults"]
    assert report["turns_checked"] == 3


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("time_ms", "time_ms + 1"),
        ("turn_id", "'t_forged'"),
        ("type", "'turn.failed'"),
        ("tenant", "'globex'"),
    ],
)
def test_an_edited_entry_column_is_named_by_its_entry(
    ledger: Ledger, column: str, value: str
) -> None:
    idx = _entry(ledger, "turn.received")
    _raw(ledger.url, f"UPDATE ledger_entries SET {column} = {value} WHERE idx = {idx}")
    faults = _faults(_verify(ledger))
    assert any(
        f["index"] == idx and f["kind"] == "column" and f"ledger_entries.{column}" in f["message"]
        for f in faults
    ), faults


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("status", "'failed'"),
        ("outcome", "'blocked'"),
        ("model", "'gemini-3-pro-image-preview'"),
        ("tenant", "'globex'"),
        ("first_entry_index", "first_entry_index + 1"),
        ("request_sha256", "'" + "0" * 64 + "'"),
        ("prompt_sha256", "'" + "1" * 64 + "'"),
        ("model_version", "'forged-model'"),
    ],
)
def test_an_edited_turns_row_is_named(ledger: Ledger, column: str, value: str) -> None:
    _raw(ledger.url, f"UPDATE turns SET {column} = {value} WHERE turn_id = '{ledger.released}'")
    faults = _faults(_verify(ledger))
    assert any(
        f["row"] == f"turns turn_id={ledger.released}" and column in str(f["message"])
        for f in faults
    ), faults


def test_a_deleted_turns_row_is_named_by_the_closing_entry(ledger: Ledger) -> None:
    _raw(
        ledger.url,
        f"DELETE FROM turn_images WHERE turn_id = '{ledger.failed}'",
        f"DELETE FROM decision_inputs WHERE turn_id = '{ledger.failed}'",
        f"DELETE FROM turns WHERE turn_id = '{ledger.failed}'",
    )
    (idx,) = _one(
        ledger.url,
        "SELECT idx FROM ledger_entries WHERE turn_id = :t AND type = 'turn.failed'",
        {"t": ledger.failed},
    )
    faults = _faults(_verify(ledger))
    assert any(f["index"] == idx and "no turns row" in str(f["message"]) for f in faults), faults


def test_a_turns_row_without_events_is_named(ledger: Ledger) -> None:
    _raw(
        ledger.url,
        "INSERT INTO turns (turn_id, tenant, actor, model, api_version, method, status, upstream,"
        " created_ms) VALUES ('t_invented', 'acme', 'editor@acme', 'm', 'v1beta',"
        " 'generateContent', 'released', 'x', 0)",
    )
    faults = _faults(_verify(ledger))
    assert any(f["row"] == "turns turn_id=t_invented" for f in faults), faults


@pytest.mark.parametrize(
    ("direction", "column", "value"),
    [
        ("input", "sha256", "'" + "a" * 64 + "'"),
        ("input", "role", "'mask'"),
        ("input", "width", "width + 1"),
        ("output", "sha256", "'" + "b" * 64 + "'"),
        ("output", "signed_sha256", "'" + "c" * 64 + "'"),
        ("output", "manifest_sha256", "'" + "d" * 64 + "'"),
    ],
)
def test_an_edited_turn_images_row_is_named(
    ledger: Ledger, direction: str, column: str, value: str
) -> None:
    (row_id,) = _one(
        ledger.url,
        "SELECT id FROM turn_images WHERE turn_id = :t AND direction = :d",
        {"t": ledger.released, "d": direction},
    )
    _raw(ledger.url, f"UPDATE turn_images SET {column} = {value} WHERE id = {row_id}")
    faults = _faults(_verify(ledger))
    assert any(
        f["row"] == f"turn_images id={row_id}" and column in str(f["message"]) for f in faults
    ), faults


@pytest.mark.parametrize("direction", ["input", "output"])
def test_a_deleted_turn_images_row_is_named(ledger: Ledger, direction: str) -> None:
    _raw(
        ledger.url,
        f"DELETE FROM turn_images WHERE turn_id = '{ledger.released}'"
        f" AND direction = '{direction}'",
    )
    faults = _faults(_verify(ledger))
    assert any(f["row"] == f"turn_images turn_id={ledger.released}" for f in faults), faults


@pytest.mark.parametrize(
    ("direction", "column", "value"),
    [
        ("output", "pdq", "'" + "0" * 64 + "'"),
        ("output", "iscc", "'ISCC:EEAYAAAAAAAAAAAA'"),
        ("output", "sha256", "'" + "e" * 64 + "'"),
        ("output", "b3", "b3 # 1"),
        ("input", "sha256", "'" + "e" * 64 + "'"),
        ("input", "tenant", "'globex'"),
    ],
)
def test_an_edited_image_fingerprints_row_is_named(
    ledger: Ledger, direction: str, column: str, value: str
) -> None:
    (row_id,) = _one(
        ledger.url,
        "SELECT id FROM image_fingerprints WHERE turn_id = :t AND direction = :d",
        {"t": ledger.released, "d": direction},
    )
    if value == "b3 # 1":  # a band no longer its hash's: the lookup would miss the row
        value = "CASE WHEN b3 = 0 THEN 1 ELSE 0 END"
    _raw(ledger.url, f"UPDATE image_fingerprints SET {column} = {value} WHERE id = {row_id}")
    faults = _faults(_verify(ledger))
    assert any(f["row"] == f"image_fingerprints id={row_id}" for f in faults), faults


def test_a_deleted_output_fingerprint_row_is_named(ledger: Ledger) -> None:
    _raw(
        ledger.url,
        f"DELETE FROM image_fingerprints WHERE turn_id = '{ledger.released}'"
        " AND direction = 'output'",
    )
    faults = _faults(_verify(ledger))
    assert any(f["row"] == f"image_fingerprints turn_id={ledger.released}" for f in faults), faults


def test_a_decision_inputs_row_of_no_turn_is_named(ledger: Ledger) -> None:
    (row_id,) = _one(
        ledger.url, "SELECT id FROM decision_inputs WHERE turn_id = :t", {"t": ledger.released}
    )
    _raw(ledger.url, f"UPDATE decision_inputs SET turn_id = 't_elsewhere' WHERE id = {row_id}")
    faults = _faults(_verify(ledger))
    assert any(f["row"] == f"decision_inputs id={row_id}" for f in faults), faults


@pytest.mark.parametrize("edit", ["commitment", "stage", "delete"])
def test_an_edited_decision_inputs_row_is_named(ledger: Ledger, edit: str) -> None:
    (row_id,) = _one(
        ledger.url,
        "SELECT id FROM decision_inputs WHERE turn_id = :t ORDER BY id",
        {"t": ledger.released},
    )
    sql = {
        "commitment": "UPDATE decision_inputs SET input_commitment = 'salted-sha256:forged'",
        "stage": "UPDATE decision_inputs SET stage = 'response'",
        "delete": "DELETE FROM decision_inputs",
    }[edit]
    _raw(ledger.url, f"{sql} WHERE id = {row_id}")
    faults = _faults(_verify(ledger))
    assert any(f["row"] == f"decision_inputs turn_id={ledger.released}" for f in faults), faults


def _request_commitment(ledger: Ledger) -> tuple[str, str]:
    commitment, digest = _one(
        ledger.url,
        "SELECT commitment, digest FROM blob_commitments WHERE digest = "
        "(SELECT request_sha256 FROM turns WHERE turn_id = :t)",
        {"t": ledger.released},
    )
    return str(commitment), str(digest)


def test_a_forged_erasure_is_named_by_its_salt_row(ledger: Ledger) -> None:
    """Empty a salt and delete the blob, with no erasure event: not an erasure, a fault."""
    commitment, digest = _request_commitment(ledger)
    _raw(
        ledger.url,
        "UPDATE blob_commitments SET salt = :e WHERE digest = :d",
        params={"e": b"", "d": digest},
    )
    (ledger.data_dir / "blobs" / digest[:2] / digest[2:4] / digest).unlink()
    faults = _faults(_verify(ledger))
    assert any(
        f["row"] == f"blob_commitments commitment={commitment}" and f["kind"] == "erasure"
        for f in faults
    ), faults


def test_a_forged_erasure_row_without_its_event_is_named(ledger: Ledger) -> None:
    _, digest = _request_commitment(ledger)
    _raw(
        ledger.url,
        "INSERT INTO blob_erasures (digest, time_ms, reason, actor) VALUES (:d, 1, 'x', 'y')",
        "UPDATE blob_commitments SET salt = :e WHERE digest = :d",
        params={"e": b"", "d": digest},
    )
    (ledger.data_dir / "blobs" / digest[:2] / digest[2:4] / digest).unlink()
    faults = _faults(_verify(ledger))
    assert any(str(f["row"]).startswith("blob_erasures id=") for f in faults), faults


def test_a_deleted_blob_with_its_salt_is_named_by_its_entry(ledger: Ledger) -> None:
    _, digest = _request_commitment(ledger)
    (ledger.data_dir / "blobs" / digest[:2] / digest[2:4] / digest).unlink()
    faults = _faults(_verify(ledger))
    assert any(f["index"] == _entry(ledger, "turn.received") for f in faults), faults
