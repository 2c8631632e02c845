"""The ledger's HTTP routes: auditors read checkpoints, entries and proofs that verify offline."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from storage.ledger.checkpoint import open_checkpoint
from storage.ledger.merkle import check_consistency, check_inclusion, leaf_hash
from storage.ledger.note import NoteVerifier


def _get(custody, path: str, role: str = "auditor", **params: object) -> httpx.Response:
    return httpx.get(
        custody.base_url + path,
        params=params,
        headers={"x-goog-api-key": custody.keys[role]},
        timeout=30,
    )


def _when_checkpointed(custody, path: str, **params: object) -> httpx.Response:
    """GET as an auditor, waiting as told by 503 + Retry-After until a checkpoint covers it."""
    for _ in range(20):
        resp = _get(custody, path, **params)
        if resp.status_code != 503:
            assert resp.status_code == 200, resp.text
            return resp
        assert resp.json()["error"]["details"][0]["reason"] == "NOT_YET_CHECKPOINTED"
        time.sleep(int(resp.headers["retry-after"]))
    raise AssertionError(f"{path} was never checkpointed")


def _a_turn(custody, key: str = "editor") -> None:
    body = b'{"contents":[{"role":"user","parts":[{"text":"a red bicycle"}]}]}'
    resp = httpx.post(
        custody.base_url + "/v1beta/models/gemini-2.5-flash-image:generateContent",
        content=body,
        headers={"x-goog-api-key": custody.keys[key]},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "path",
    ["/api/v1/ledger/checkpoint", "/api/v1/ledger/entries", "/api/v1/ledger/proof/file?index=0"],
)
def test_ledger_routes_need_the_auditor_role(custody, path) -> None:
    _a_turn(custody)
    assert _get(custody, path, role="editor").status_code == 403
    assert httpx.get(custody.base_url + path).status_code == 401


def test_checkpoint_and_proofs_verify_against_the_published_key(custody) -> None:
    for _ in range(3):
        _a_turn(custody)
    issued = httpx.post(
        custody.base_url + "/api/v1/ledger/checkpoint",
        headers={"x-goog-api-key": custody.keys["admin"]},
    )
    assert issued.status_code == 200
    note = _get(custody, "/api/v1/ledger/checkpoint").text
    vkey = custody.services.ledger_verifier_key
    cp = open_checkpoint(
        note, NoteVerifier.from_key_string(vkey), custody.services.settings.log_origin
    )
    assert cp.size >= 18  # three turns of at least six events each

    entries = _get(custody, "/api/v1/ledger/entries", start=0, end=cp.size).json()["entries"]
    for index in (0, cp.size // 2, cp.size - 1):
        proof = _get(custody, "/api/v1/ledger/proof/inclusion", index=index, size=cp.size).json()
        leaf = base64.b64decode(entries[index]["leaf"])
        assert base64.b64decode(proof["leaf_hash"]) == leaf_hash(leaf)
        check_inclusion(
            [base64.b64decode(h) for h in proof["hashes"]], cp.size, cp.root, index, leaf_hash(leaf)
        )

    old = 5
    cons = _get(custody, "/api/v1/ledger/proof/consistency", old=old, new=cp.size).json()
    check_consistency(
        [base64.b64decode(h) for h in cons["hashes"]],
        cp.size,
        cp.root,
        old,
        base64.b64decode(cons["old_root"]),
    )


def test_other_tenants_entries_show_only_their_leaf_hash(custody) -> None:
    _a_turn(custody, key="other-tenant-editor")
    _a_turn(custody)
    entries = _get(custody, "/api/v1/ledger/entries").json()["entries"]
    mine = [e for e in entries if "event" in e]
    theirs = [e for e in entries if "redacted" in e]
    assert mine and theirs
    assert all(e["event"]["tenant"] == "acme" for e in mine)
    assert all(set(e) == {"index", "leaf_hash", "redacted"} for e in theirs)


def test_offline_proof_file_verifies_without_the_database(custody, tmp_path: Path) -> None:
    _a_turn(custody)
    text = _when_checkpointed(custody, "/api/v1/ledger/proof/file", index=2).text
    entries = _get(custody, "/api/v1/ledger/entries", start=2, end=3).json()["entries"]
    (tmp_path / "entry.tlog-proof").write_text(text)
    (tmp_path / "leaf.json").write_bytes(base64.b64decode(entries[0]["leaf"]))
    args = [
        sys.executable,
        "-m",
        "governance.cli",
        "ledger",
        "verify-proof",
        str(tmp_path / "entry.tlog-proof"),
        "--leaf",
        str(tmp_path / "leaf.json"),
        "--vkey",
        custody.services.ledger_verifier_key,
        "--origin",
        custody.services.settings.log_origin,
    ]
    ok = subprocess.run(args, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "leaf.json").write_bytes(base64.b64decode(entries[0]["leaf"]) + b" ")
    bad = subprocess.run(args, capture_output=True, text=True)
    assert bad.returncode == 1 and "INVALID" in bad.stdout


def test_bad_query_is_a_json_4xx(custody) -> None:
    resp = _get(custody, "/api/v1/ledger/proof/inclusion", index=10_000)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 400
    resp = _get(custody, "/api/v1/ledger/entries", start="x")
    assert resp.status_code == 400 and "error" in resp.json()
