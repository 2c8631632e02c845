"""``POST/GET /api/v1/evidence/bundles``: an auditor exports its tenant's session over HTTP, the
download verifies offline, another tenant cannot fetch it; ``since``/``until`` (ISO 8601 or
milliseconds) cut the export to a time window; bad requests are clear 400s, each recorded as
``request.refused``, and export nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from governance.evidence.verify import verify_bundle
from storage.ledger.note import split_note
from tests.conftest import RunningCustody
from tests.evidence_helpers import SESSION, Driven, members, run_session, start
from tests.review_helpers import api

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningCustody, Driven]]:
    """A gateway with the evidence session (masked edit, review, rollback) and a checkpoint
    over all of it (an auditor's export never signs one)."""
    custody = start(tmp_path_factory.mktemp("evidence-api"))
    try:
        session = run_session(custody, (FIXTURES / "IMG_0003.jpg").read_bytes())
        signed = api(custody, custody.keys["admin"], "POST", "/api/v1/ledger/checkpoint")
        assert signed.status_code == 200 and split_note(signed.text)[0]
        yield custody, session
    finally:
        custody.stop()


def _export(custody: RunningCustody, body: dict[str, Any], out: Path) -> dict[str, Any]:
    auditor = custody.keys["auditor"]
    resp = api(custody, auditor, "POST", "/api/v1/evidence/bundles", json=body)
    assert resp.status_code == 200, resp.text
    made: dict[str, Any] = resp.json()
    got = api(custody, auditor, "GET", made["download"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/zip"
    out.write_bytes(got.content)
    vkey = custody.services.ledger.signer.verifier_key()  # type: ignore[attr-defined]
    report = verify_bundle(out, log_key=vkey)
    assert report.ok, report.summary()
    return made


def test_an_auditor_exports_a_session_and_the_download_verifies(
    driven: tuple[RunningCustody, Driven], tmp_path: Path
) -> None:
    custody, _ = driven
    path = tmp_path / "api.zip"
    made = _export(custody, {"session": SESSION, "disclose": "prompt,mask"}, path)
    assert made["bundle"]["entries"] > 10 and made["tenant"] == "acme"
    report = verify_bundle(path, log_key=custody.services.ledger.signer.verifier_key())  # type: ignore[attr-defined]
    assert report.checked["images"] == 4
    assert report.events["lineage.recorded (rollback)"] == 1
    # another tenant's editor may not read it (403: not a reader) and a reader of another
    # tenant finds nothing (404, as for a bundle that does not exist)
    other = custody.keys["other-tenant-editor"]
    assert api(custody, other, "GET", made["download"]).status_code == 403
    exported = [
        e
        for e in custody.ledger_events()
        if e["type"] == "evidence.exported" and e["body"]["bundle"] == made["id"]  # type: ignore[index]
    ]
    assert [e["body"]["via"] for e in exported] == ["api"]  # type: ignore[index]
    assert exported[0]["actor"] == "auditor@acme"
    assert exported[0]["body"]["disclose"] == ["mask", "prompt"]  # type: ignore[index]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_since_and_until_cut_the_export_at_the_rollback(
    driven: tuple[RunningCustody, Driven], tmp_path: Path
) -> None:
    """``since`` = the rollback's first entry (as ISO 8601) keeps the rollback and drops the
    chat turns; ``until`` = the same moment (in ms) keeps the chat turns and drops the rollback.
    The two bundles split the session's entries between them; both verify."""
    custody, session = driven
    ledger = custody.services.ledger  # type: ignore[attr-defined]
    # A checkpoint over every entry so far: the exports below cover the same entries, whenever
    # the background job signs its next one (after this, only the exports' own events follow).
    size = ledger.issue_checkpoint().size
    times = {e.index: e.time_ms for e in ledger.entries(0, size)}
    events = [e for e in custody.ledger_events() if int(e["index"]) < size]  # type: ignore[call-overload]
    rollback = session.rollback["turn"]
    start = min(times[int(e["index"])] for e in events if e.get("turn") == rollback)  # type: ignore[call-overload]
    # the session's entries, and the exports of it (recorded under the name the client gave)
    named = (session.session, SESSION)
    ours = {int(e["index"]) for e in events if e.get("session") in named}  # type: ignore[call-overload]

    after = _export(custody, {"session": SESSION, "since": _iso(start)}, tmp_path / "after.zip")
    before = _export(custody, {"session": SESSION, "until": start}, tmp_path / "before.zip")
    got_after = _entries(tmp_path / "after.zip")
    got_before = _entries(tmp_path / "before.zip")
    assert all(times[i] >= start for i in got_after) and all(times[i] < start for i in got_before)
    assert set(got_after) | set(got_before) == ours and not set(got_after) & set(got_before)
    assert "turn.released" in got_after.values() and "review.decided" in got_before.values()
    assert sum(t == "turn.released" for t in got_before.values()) == 3
    kinds = [t for t in got_after.values() if t.startswith("lineage")]
    assert kinds == ["lineage.recorded"] and before["bundle"]["entries"] == len(got_before)
    recorded = [
        e["body"]["selection"]  # type: ignore[index]
        for e in custody.ledger_events()
        if e["type"] == "evidence.exported" and e["body"]["bundle"] in (after["id"], before["id"])  # type: ignore[index]
    ]
    assert {(s["since_ms"], s["until_ms"]) for s in recorded} == {(start, None), (None, start)}


def _entries(bundle: Path) -> dict[int, str]:
    files = members(bundle)
    return {
        int(n.split("/")[1].split(".")[0]): json.loads(files[n])["type"]
        for n in files
        if n.startswith("entries/")
    }


BAD = (
    ({"disclose": "everything!"}, "--disclose takes"),
    ({"nonsense": 1}, "nonsense"),
    ({"since_ms": 1}, "since_ms"),
    ({"since": "yesterday"}, "since takes an ISO 8601 time"),
    ({"until": -1}, "until must be from 1970 on"),
    ({"since": True}, "since"),
    ({"since": "2026-12-03T10:00:00Z", "until": "2026-12-03T09:00Z"}, "is not after since"),
    ({"tenant": "globex"}, "exports tenant 'acme' only"),
)


def test_bad_evidence_requests_are_clear_recorded_400s_and_nothing_is_exported(
    tmp_path: Path,
) -> None:
    custody = start(tmp_path)
    try:
        auditor = custody.keys["auditor"]
        for body, words in BAD:
            resp = api(custody, auditor, "POST", "/api/v1/evidence/bundles", json=body)
            assert resp.status_code in (400, 403), resp.text
            assert words in resp.json()["error"]["message"], resp.text
        resp = httpx.post(
            custody.base_url + "/api/v1/evidence/bundles",
            headers={"x-goog-api-key": auditor},
            content=b"{not json",
        )
        assert resp.status_code == 400 and "Invalid request body" in resp.json()["error"]["message"]
        resp = httpx.get(
            custody.base_url + "/api/v1/evidence/bundles/../../etc/passwd",
            headers={"x-goog-api-key": auditor},
        )
        assert resp.status_code == 404
        events = custody.ledger_events()
        assert not [e for e in events if e["type"] == "evidence.exported"]
        refused = [
            e
            for e in events
            if e["type"] == "request.refused" and e["body"]["path"] == "/api/v1/evidence/bundles"  # type: ignore[index]
        ]
        assert len(refused) == len(BAD) + 1
        assert all(e["actor"] == "auditor@acme" for e in refused)
        assert {e["body"]["code"] for e in refused} == {400, 403}  # type: ignore[index]
    finally:
        custody.stop()
