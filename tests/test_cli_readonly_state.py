"""Commands that read (or act on what exists) refuse a missing installation and create nothing.

A read-only command that made a fresh PKI, ledger and note key wherever it ran, and then said
``OK: the ledger verifies (0 entries)``, told an auditor "OK" about a ledger nobody uses. Every
such command now goes through ``governance.state.open_state(create=False)``: one line on stderr
naming the data dir and database it looked at, exit status 2, no traceback, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from storage.db import normalise_url
from storage.ledger.note import Ed25519NoteSigner

REPO = Path(__file__).resolve().parent.parent
READ_ONLY = [
    ("ledger", "verify"),
    ("ledger", "checkpoint"),
    ("ledger", "vkey"),
    ("ledger", "proof", "0"),
    ("policy", "diff", str(REPO / "policies"), str(REPO / "policies"), "--replay", "5"),
    # Not read-only, but they act on what an installation holds: a new, empty one is never right.
    ("keys", "list"),
    ("keys", "revoke", "00000000000000ff"),
    ("keys", "rotate", "00000000000000ff"),
    ("erase", "ab" * 32, "--reason", "a lawful-erasure request"),
    ("accounts", "disable", "--tenant", "acme", "--username", "bob"),
    ("query", "turns"),
    ("authorship", "ses_" + "0" * 24, "--out", "authorship.json"),
]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env["HOME"] = str(tmp_path / "home")  # no per-user config file of the machine's user
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    env.update(extra)
    return env


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        timeout=300,
    )


def _assert_refused(proc: subprocess.CompletedProcess[str], data_dir: Path) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no Custody installation" in lines[0] and str(data_dir) in lines[0]
    assert "CUSTODY_DATA_DIR" in lines[0], "the message says how to point at the right one"
    assert "OK" not in proc.stdout


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: " ".join(c[:2]))
def test_read_only_commands_refuse_a_missing_sqlite_installation(tmp_path, command) -> None:
    data_dir = tmp_path / "nowhere"
    proc = _cli(_env(tmp_path, CUSTODY_DATA_DIR=str(data_dir)), tmp_path / "cwd", *command)
    _assert_refused(proc, data_dir)
    assert not data_dir.exists(), "a read-only command created the data dir"
    assert list((tmp_path / "cwd").iterdir()) == [], "nothing may appear in the current directory"


def test_read_only_commands_refuse_an_empty_postgres_database(tmp_path, pg_url) -> None:
    data_dir = tmp_path / "data"
    env = _env(tmp_path, CUSTODY_DATA_DIR=str(data_dir), CUSTODY_DATABASE_URL=pg_url)
    proc = _cli(env, tmp_path / "cwd", "ledger", "verify")
    _assert_refused(proc, data_dir)
    assert "no Custody schema" in proc.stderr
    engine = create_engine(normalise_url(pg_url))
    try:
        assert inspect(engine).get_table_names() == [], "a read-only command migrated the database"
    finally:
        engine.dispose()
    assert not data_dir.exists()


def test_a_missing_note_key_is_no_installation(tmp_path, db_url) -> None:
    data_dir = tmp_path / "data"
    env = _env(tmp_path, CUSTODY_DATA_DIR=str(data_dir), CUSTODY_DATABASE_URL=db_url)
    assert (
        _cli(
            env, tmp_path / "a", "keys", "create", "--role", "editor", "--tenant", "acme"
        ).returncode
        == 0
    )
    (data_dir / "ledger-note.key").unlink()
    proc = _cli(env, tmp_path / "b", "ledger", "vkey")
    _assert_refused(proc, data_dir)
    assert "ledger note key" in proc.stderr
    assert not (data_dir / "ledger-note.key").exists(), "the key must not be re-created"


def test_every_command_finds_the_configured_installation_from_any_directory(
    tmp_path, db_url
) -> None:
    home = tmp_path / "home"
    config = home / ".config" / "custody" / "custody.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'data_dir = "{tmp_path / "state"}"\ndatabase_url = "{db_url}"\n')
    env = _env(tmp_path)
    made = _cli(env, tmp_path / "one", "keys", "create", "--role", "editor", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    verified = _cli(env, tmp_path / "two", "ledger", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    vkey = _cli(env, tmp_path / "three", "ledger", "vkey")
    key_file = (tmp_path / "state" / "ledger-note.key").read_text()
    assert vkey.stdout.strip() == Ed25519NoteSigner.from_key_string(key_file).verifier_key()
    for folder in ("one", "two", "three"):
        assert list((tmp_path / folder).iterdir()) == [], f"state appeared in {folder}/"


def test_verify_says_the_image_was_not_looked_up_when_there_is_no_ledger(
    tmp_path, fixtures_dir
) -> None:
    data_dir = tmp_path / "nowhere"
    env = _env(tmp_path, CUSTODY_DATA_DIR=str(data_dir))
    image = str(fixtures_dir / "credentialed" / "C.jpg")
    proc = _cli(env, tmp_path / "cwd", "verify", image)
    assert proc.returncode == 0, proc.stderr
    assert "not looked up" in proc.stderr and str(data_dir) in proc.stderr
    assert "ledger: the image was not looked up" in proc.stdout
    as_json = _cli(env, tmp_path / "cwd", "verify", image, "--json")
    out = json.loads(as_json.stdout)
    assert out["ledger"] is None and "not looked up" in out["ledger_lookup"]
    assert not data_dir.exists(), "verify created an installation (PKI, ledger or key)"


def test_verify_of_a_released_image_finds_its_record_from_another_directory(
    tmp_path, custody, photo_bytes
) -> None:
    from google.genai import types

    response = custody.client("editor").models.generate_content(
        model="gemini-2.5-flash-image",
        contents=[
            types.Part.from_bytes(data=photo_bytes["sample1.png"], mime_type="image/png"),
            "warmer light",
        ],
    )
    signed = next(p.inline_data.data for p in response.candidates[0].content.parts if p.inline_data)
    image = tmp_path / "released.png"
    image.write_bytes(signed)
    settings = custody.services.settings
    env = _env(
        tmp_path,
        CUSTODY_DATA_DIR=str(settings.data_dir),
        CUSTODY_DATABASE_URL=settings.effective_database_url,
    )
    proc = _cli(env, tmp_path / "elsewhere", "verify", str(image), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["c2pa"]["state"] == "Trusted"
    assert out["ledger"] and out["ledger"]["proofs_verified"]
    assert out["ledger_lookup"].startswith("found in the ledger at")
