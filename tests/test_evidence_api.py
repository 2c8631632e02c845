"""``POST/GET /api/v1/evidence/bundles``: an auditor exports its tenant's session over HTTP, the
download verifies offline, another tenant cannot fetch it, bad requests are clear 400s."""

from __future__ import annotations

from pathlib import Path

import httpx

from governance.evidence.verify import verify_bundle
from storage.ledger.note import split_note
from tests.evidence_helpers import SESSION, run_session, start
from tests.review_helpers import api

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "photos"


def test_an_auditor_exports_a_session_and_the_download_verifies(tmp_path: Path) -> None:
    custody = start(tmp_path)
    try:
        run_session(custody, (FIXTURES / "IMG_0003.jpg").read_bytes())
        signed = api(custody, custody.keys["admin"], "POST", "/api/v1/ledger/checkpoint")
        assert signed.status_code == 200
        earlier = split_note(signed.text)[0]
        assert earlier
        auditor = custody.keys["auditor"]
        resp = api(
            custody,
            auditor,
            "POST",
            "/api/v1/evidence/bundles",
            json={"session": SESSION, "disclose": "prompt,mask"},
        )
        assert resp.status_code == 200, resp.text
        made = resp.json()
        assert made["bundle"]["entries"] > 10 and made["tenant"] == "acme"
        got = api(custody, auditor, "GET", made["download"])
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/zip"
        path = tmp_path / "api.zip"
        path.write_bytes(got.content)
        vkey = custody.services.ledger.signer.verifier_key()  # type: ignore[attr-defined]
        report = verify_bundle(path, log_key=vkey)
        assert report.ok, report.summary()
        assert report.checked["images"] == 3
        # another tenant's editor may not read it (403: not a reader) and a reader of another
        # tenant finds nothing (404, as for a bundle that does not exist)
        other = custody.keys["other-tenant-editor"]
        assert api(custody, other, "GET", made["download"]).status_code == 403
        exported = [e for e in custody.ledger_events() if e["type"] == "evidence.exported"]
        assert [e["body"]["via"] for e in exported] == ["api"]
        assert exported[0]["actor"] == "auditor@acme"
        assert exported[0]["body"]["disclose"] == ["mask", "prompt"]
    finally:
        custody.stop()


def test_bad_evidence_requests_are_clear_400s_and_nothing_is_exported(tmp_path: Path) -> None:
    custody = start(tmp_path)
    try:
        auditor = custody.keys["auditor"]
        for body, words in (
            ({"disclose": "everything!"}, "--disclose takes"),
            ({"nonsense": 1}, "nonsense"),
            ({"since_ms": -1}, "since_ms"),
            ({"tenant": "globex"}, "exports tenant 'acme' only"),
        ):
            resp = api(custody, auditor, "POST", "/api/v1/evidence/bundles", json=body)
            assert resp.status_code in (400, 403), resp.text
            assert words in resp.json()["error"]["message"], resp.text
        resp = httpx.get(
            custody.base_url + "/api/v1/evidence/bundles/../../etc/passwd",
            headers={"x-goog-api-key": auditor},
        )
        assert resp.status_code == 404
        assert not [e for e in custody.ledger_events() if e["type"] == "evidence.exported"]
    finally:
        custody.stop()
