"""RFC 3161 timestamps of evidence bundles, from a local TSA built on ``openssl ts -reply``.

The export asks the TSA of ``CUSTODY_EVIDENCE_TSA_URL`` for a token over ``SHA256SUMS``;
``custody verify-bundle --tsa-root`` checks it offline with rfc3161-client, ``openssl ts
-verify`` checks the same token, and a token from another TSA, over other sums, or with a
changed byte fails naming ``SHA256SUMS.tsr``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from governance.evidence.timestamp import timestamp_check
from governance.evidence.verify import verify_bundle
from storage.ledger.note import split_note
from tests.evidence_helpers import cli, custody_env, flip_one_byte, members, offline_env, rewrite
from tests.evidence_helpers import start as start_gateway
from tests.tsa_helpers import LocalTsa, openssl_verify, start_tsa


@pytest.fixture()
def tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    running = start_tsa(tmp_path / "tsa")
    try:
        yield running
    finally:
        running.stop()


def test_a_timestamped_bundle_verifies_offline_and_with_openssl(
    tmp_path: Path, tsa: LocalTsa
) -> None:
    custody = start_gateway(tmp_path)
    try:
        custody.client("editor").models.generate_content(  # type: ignore[attr-defined]
            model="gemini-2.5-flash-image", contents="a teal sofa"
        )
        vkey = custody.services.ledger.signer.verifier_key()  # type: ignore[attr-defined]
        env = {**custody_env(custody), "CUSTODY_EVIDENCE_TSA_URL": tsa.url}
        out = tmp_path / "stamped.zip"
        done = cli("export", "--tenant", "acme", "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
    finally:
        custody.stop()
    files = members(out)
    assert "SHA256SUMS.tsr" in files
    lonely = tmp_path / "elsewhere"
    lonely.mkdir()
    args = ["verify-bundle", str(out), "--log-key", vkey]
    ok = cli(*args, "--tsa-root", str(tsa.root_pem), env=offline_env(lonely), cwd=lonely)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 RFC 3161 timestamps verify" in " ".join(ok.stdout.split())
    unchecked = cli(*args, env=offline_env(lonely), cwd=lonely)
    assert unchecked.returncode == 0 and "not checked: give --tsa-root" in unchecked.stdout
    # openssl, over the extracted files
    with zipfile.ZipFile(out) as zf:
        zf.extract("SHA256SUMS", lonely)
        zf.extract("SHA256SUMS.tsr", lonely)
    checked = openssl_verify(lonely / "SHA256SUMS", lonely / "SHA256SUMS.tsr", tsa)
    assert checked.returncode == 0 and "Verification: OK" in checked.stdout, checked.stderr
    # the checkpoint's own token, over its body (the lines the log signs)
    (lonely / "body.txt").write_text(split_note(files["checkpoint.txt"].decode())[0])
    (lonely / "cp.tsr").write_bytes(files["timestamps/checkpoint.tsr"])
    checked = openssl_verify(lonely / "body.txt", lonely / "cp.tsr", tsa)
    assert checked.returncode == 0 and "Verification: OK" in checked.stdout, checked.stderr
    # another TSA's root, a changed token, changed sums: each a fault naming the token
    stranger = start_tsa(tmp_path / "other-tsa")
    try:
        check = timestamp_check(stranger.root_pem.read_bytes())
        report = verify_bundle(out, log_key=vkey, extra_checks=[check], check_images=False)
        faults = sorted(f.file for f in report.faults)
        assert faults == ["SHA256SUMS.tsr", "timestamps/checkpoint.tsr"], report.summary()
    finally:
        stranger.stop()
    check = timestamp_check(tsa.root_pem.read_bytes())
    bad = rewrite(
        out, tmp_path / "bad.zip", "SHA256SUMS.tsr", flip_one_byte(files["SHA256SUMS.tsr"])
    )
    report = verify_bundle(bad, log_key=vkey, extra_checks=[check], check_images=False)
    assert any(f.file == "SHA256SUMS.tsr" for f in report.faults), report.summary()
    sums = files["SHA256SUMS"] + b"0" * 64 + b"  extra.txt\n"
    bad = rewrite(out, tmp_path / "bad2.zip", "SHA256SUMS", sums)
    report = verify_bundle(bad, log_key=vkey, extra_checks=[check], check_images=False)
    assert any(
        f.file == "SHA256SUMS.tsr" and "does not verify" in f.message for f in report.faults
    ), report.summary()


def test_an_unreachable_tsa_fails_the_export_and_writes_nothing(tmp_path: Path) -> None:
    custody = start_gateway(tmp_path)
    try:
        custody.client("editor").models.generate_content(  # type: ignore[attr-defined]
            model="gemini-2.5-flash-image", contents="a teal sofa"
        )
        env = {**custody_env(custody), "CUSTODY_EVIDENCE_TSA_URL": "http://127.0.0.1:9/tsa"}
        out = tmp_path / "never.zip"
        done = cli("export", "--tenant", "acme", "--out", str(out), env=env)
        assert done.returncode == 1 and "did not answer" in done.stderr
        assert not out.exists() and not Path(str(out) + ".partial").exists()
        assert not [e for e in custody.ledger_events() if e["type"] == "evidence.exported"]
    finally:
        custody.stop()


def test_the_gateway_timestamps_each_new_checkpoint(tmp_path: Path, tsa: LocalTsa) -> None:
    import time

    from governance.evidence.timestamp import verify_token
    from storage.ledger.timestamps import CheckpointTimestamps

    custody = start_gateway(tmp_path, evidence_tsa_url=tsa.url)
    try:
        custody.client("editor").models.generate_content(  # type: ignore[attr-defined]
            model="gemini-2.5-flash-image", contents="a teal sofa"
        )
        ledger = custody.services.ledger  # type: ignore[attr-defined]
        stamps = CheckpointTimestamps(ledger.engine)
        end = time.monotonic() + 60
        token = None
        while token is None and time.monotonic() < end:
            cp = ledger.checkpoints()[-1]
            token = stamps.get(cp.size) if cp.size else None
            time.sleep(0.1)
        assert token is not None, "the background job stamped no checkpoint"
        body = split_note(cp.note)[0].encode()
        assert verify_token(token, body, tsa.root_pem.read_bytes())
    finally:
        custody.stop()
