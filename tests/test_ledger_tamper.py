"""Tampering bypassing the application is caught by ``custody ledger verify``, on both databases.

Each test writes a real ledger, then changes one byte directly in the database (with the
append-only triggers dropped, as a table owner could) or in the blob store, and runs the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.db import is_sqlite, make_engine
from tests.ledger_helpers import custody_cli, event, open_ledger

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

ENTRIES = 40


def _write(url: str, data_dir: Path) -> str:
    """A ledger of ENTRIES events with committed blobs; returns a published checkpoint."""
    ledger, commitments = open_ledger(url, data_dir, checkpoint_every_entries=16)
    for i in range(ENTRIES):
        c = commitments.put_committed(f"content {i}".encode())
        ledger.append([event(i, content=c.commitment)])
    note = ledger.issue_checkpoint().note
    ledger.close()
    ledger.engine.dispose()
    return note


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


def _flip(url: str, table: str, column: str, key: str, value: int) -> None:
    """Flip one bit of byte 5 of a stored value, directly in the database."""
    engine = make_engine(url, immediate=False)
    with engine.connect() as conn:
        data = bytes(
            conn.execute(text(f"SELECT {column} FROM {table} WHERE {key} = {value}")).one()[0]
        )
    engine.dispose()
    changed = data[:5] + bytes([data[5] ^ 1]) + data[6:]
    _raw(url, f"UPDATE {table} SET {column} = :v WHERE {key} = {value}", params={"v": changed})


def _verify(url: str, data_dir: Path, *extra: str) -> dict[str, object]:
    out = custody_cli(url, data_dir, "ledger", "verify", "--json", *extra)
    report = json.loads(out.stdout)
    assert (out.returncode == 0) == report["ok"], out.stderr
    return report


def test_an_untouched_ledger_verifies(db_url: str, tmp_path: Path) -> None:
    _write(db_url, tmp_path)
    report = _verify(db_url, tmp_path)
    assert report["ok"] and report["entries"] == ENTRIES
    assert report["commitments_checked"] == ENTRIES


def test_one_changed_byte_in_a_leaf_is_named_by_its_entry(db_url: str, tmp_path: Path) -> None:
    _write(db_url, tmp_path)
    _flip(db_url, "ledger_entries", "leaf", "idx", 23)
    report = _verify(db_url, tmp_path)
    assert not report["ok"]
    assert report["first_bad_entry"] == 23


def test_one_changed_interior_hash_is_caught(db_url: str, tmp_path: Path) -> None:
    _write(db_url, tmp_path)
    _flip(db_url, "ledger_hashes", "hash", "idx", 30)
    report = _verify(db_url, tmp_path)
    assert not report["ok"]
    assert any("tree hash #30" in f["message"] for f in report["faults"])


def test_one_changed_byte_in_a_checkpoint_is_caught(db_url: str, tmp_path: Path) -> None:
    _write(db_url, tmp_path)
    engine = make_engine(db_url, immediate=False)
    with engine.connect() as conn:
        size, note = conn.execute(
            text("SELECT size, note FROM ledger_checkpoints WHERE size > 0 ORDER BY size LIMIT 1")
        ).one()
    engine.dispose()
    forged = note.replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
    assert forged != note
    _raw(
        db_url,
        "UPDATE ledger_checkpoints SET note = :n WHERE size = :s",
        params={"n": forged, "s": size},
    )
    report = _verify(db_url, tmp_path)
    assert not report["ok"]
    assert any(f"checkpoint at size {size}" in f["message"] for f in report["faults"])


def test_one_changed_byte_in_a_blob_is_named_by_its_entry(db_url: str, tmp_path: Path) -> None:
    _write(db_url, tmp_path)
    engine = make_engine(db_url, immediate=False)
    with engine.connect() as conn:
        digest = conn.execute(
            text("SELECT digest FROM blob_commitments ORDER BY created_ms, commitment")
        ).all()
    engine.dispose()
    # Find the blob of entry 11 ("content 11") and change one byte of its file.
    import hashlib

    target = hashlib.sha256(b"content 11").hexdigest()
    assert any(d[0] == target for d in digest)
    path = tmp_path / "blobs" / target[:2] / target[2:4] / target
    data = path.read_bytes()
    path.write_bytes(data[:3] + bytes([data[3] ^ 1]) + data[4:])
    report = _verify(db_url, tmp_path)
    assert not report["ok"]
    assert report["first_bad_entry"] == 11
    assert "blob" in report["faults"][0]["message"]


def test_a_rewritten_history_with_a_resigned_checkpoint_fails_against_a_published_one(
    db_url: str, tmp_path: Path
) -> None:
    """An operator who owns the tables rewrites entry 5 and re-signs everything with the log
    key: the database is self-consistent again, but the checkpoint published earlier is not."""
    published = _write(db_url, tmp_path)
    (tmp_path / "published.note").write_text(published)
    assert _verify(db_url, tmp_path, "--checkpoint", str(tmp_path / "published.note"))["ok"]
    # Rebuild the log from scratch with one entry changed, re-signing with the same key.
    _raw(
        db_url,
        "DELETE FROM ledger_entries",
        "DELETE FROM ledger_hashes",
        "DELETE FROM ledger_checkpoints",
        "UPDATE ledger_head SET size = 0",
    )
    ledger, commitments = open_ledger(db_url, tmp_path, checkpoint_every_entries=16)
    for i in range(ENTRIES):
        c = commitments.put_committed(f"content {i}".encode())
        ledger.append([event(i if i != 5 else 555, content=c.commitment)])
    ledger.issue_checkpoint()
    ledger.close()
    assert _verify(db_url, tmp_path)["ok"], "the rewritten database is self-consistent"
    report = _verify(db_url, tmp_path, "--checkpoint", str(tmp_path / "published.note"))
    assert not report["ok"]
    assert any("published checkpoint" in f["message"] for f in report["faults"])


@pytest.mark.parametrize("statement", ["UPDATE {t} SET {c} = {c}", "DELETE FROM {t}"])
def test_the_database_refuses_update_and_delete(db_url: str, tmp_path: Path, statement) -> None:
    _write(db_url, tmp_path)
    engine = make_engine(db_url)
    for table, column in (
        ("ledger_entries", "leaf"),
        ("ledger_hashes", "hash"),
        ("ledger_checkpoints", "note"),
    ):
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement.format(t=table, c=column)))
    with pytest.raises(Exception, match="only grows"), engine.begin() as conn:
        conn.execute(text("UPDATE ledger_head SET size = 1"))
    if not is_sqlite(db_url):
        for table in ("ledger_entries", "ledger_hashes", "ledger_checkpoints", "ledger_head"):
            with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {table}"))
    engine.dispose()
