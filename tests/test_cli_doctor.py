"""``custody doctor`` reports what this installation resolves to, never a secret, read-only."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_SECRET = "AIza-doctor-must-never-print-this"


def _doctor(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "governance.cli", "doctor", *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        timeout=300,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env["HOME"] = str(tmp_path / "home")
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    env.update(extra)
    return env


def test_doctor_fails_with_the_reason_when_there_is_no_installation(tmp_path) -> None:
    data_dir = tmp_path / "nowhere"
    proc = _doctor(_env(tmp_path, CUSTODY_DATA_DIR=str(data_dir)), tmp_path / "cwd")
    assert proc.returncode == 1
    assert "installation:  MISSING" in proc.stdout and str(data_dir) in proc.stdout
    assert "built-in emulator" in proc.stdout
    assert not data_dir.exists(), "doctor must not create what it examines"


def test_doctor_reports_the_running_installation_without_secrets(tmp_path, db_url) -> None:
    from conftest import start_custody

    from governance.provenance.pki import DevPki

    running = start_custody(tmp_path / "custody", db_url)
    try:
        settings = running.services.settings
        verifier_key = running.services.ledger_verifier_key
        running.services.ledger.issue_checkpoint()
        size = running.services.ledger.size()
    finally:
        running.stop()
    url = db_url
    if url.startswith("postgresql://postgres@"):  # trust auth ignores it; doctor must mask it
        url = url.replace("postgres@", "postgres:pg-password-secret@", 1)
    env = _env(
        tmp_path,
        CUSTODY_DATA_DIR=str(settings.data_dir),
        CUSTODY_DATABASE_URL=url,
        CUSTODY_UPSTREAM_BASE_URL="https://gemini.example.test",
        CUSTODY_UPSTREAM_API_KEY=UPSTREAM_SECRET,
        GEMINI_API_KEY="ck_app_key_in_this_shell",
    )
    proc = _doctor(env, tmp_path / "elsewhere", "--json")
    assert proc.returncode == 0, proc.stderr
    for secret in (UPSTREAM_SECRET, "pg-password-secret", "ck_app_key_in_this_shell"):
        assert secret not in proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["installation"] == {"found": True, "problem": None}
    assert report["data_dir"] == str(settings.data_dir)
    assert report["sources"]["data_dir"] == "env" and report["sources"]["port"] == "default"
    assert report["upstream"] == {
        "target": "https://gemini.example.test",
        "emulator": False,
        "key_set": True,
        "key_source": "CUSTODY_UPSTREAM_API_KEY",
        "ignored_sdk_variables": ["GEMINI_API_KEY"],
    }
    ledger = report["ledger"]
    assert ledger["size"] == size and ledger["verifier_key"] == verifier_key
    assert ledger["latest_checkpoint"]["size"] == size
    assert ledger["latest_checkpoint"]["root"] == ledger["root"]
    root = x509.load_pem_x509_certificate(DevPki(settings.data_dir / "pki").root_cert.read_bytes())
    fingerprint = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert report["provenance"]["trust_anchors"][0]["sha256"] == fingerprint
    assert "DEVELOPMENT Root CA" in report["provenance"]["trust_anchors"][0]["subject"]
    assert "DEVELOPMENT Content Credentials signer" in report["provenance"]["signer"]["subject"]
    assert len(report["policy"]["revision"]) == 64

    text = _doctor(env, tmp_path / "elsewhere")
    assert text.returncode == 0
    assert f"ledger:        {size} entries, root {ledger['root']}" in text.stdout
    assert f"SHA-256 {fingerprint}" in text.stdout
    assert "upstream key:  set, from CUSTODY_UPSTREAM_API_KEY" in text.stdout
    assert UPSTREAM_SECRET not in text.stdout
