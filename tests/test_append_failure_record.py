"""An append that fails mid-turn loses nothing: its events go with the turn's closing append.

Found by the two-replica soak (``bench.soak --replicas 2``): when an append of a turn failed
(the host's ledger sequencer was killed), the turn closed as ``turn.failed`` with index rows
naming images and decision inputs whose events had never been appended, and ``custody ledger
verify`` reported the index inconsistent. Here the first append of a turn fails once; the caller
gets a 500, and the ledger holds the whole turn and verifies.

Found the same way (the soak's last round, PostgreSQL restarted under it): entries citing blobs
``ledger verify`` could not open ("the committed blob is missing"), two ways. A blob write that
failed was cited anyway by the turn's failure record, which carries the turn's queued events
(``output.signed`` among them) with the salts of every commitment made; and when the turn's
*closing* append failed, the salts it carried were dropped. Here the signed file's blob write
fails once, and the closing append is pushed back once (``LedgerPushback``), which must also
answer a recorded 503 with ``Retry-After`` instead of leaving the turn open.

Found with a full disk under 16 clients (docs/performance.md, "Failing turns hold no memory"):
when the failure record's own blob writes failed as well, that second error escaped the turn,
so the caller got a bare 500 or a dropped connection, and each failed turn's request, answer and
outputs stayed in reference cycles (an exception whose traceback held the frame naming it) until
a full collection: 797 MiB RSS after 400 such turns against 259 MiB now."""

from __future__ import annotations

import errno
import gc
import logging
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai import errors
from sqlalchemy import bindparam, text

from governance.recovery import find_open_turns
from storage.blobs import Commitments
from storage.ledger import LedgerPushback
from storage.ledger.note import NoteVerifier
from storage.ledger.verify import verify_ledger
from tests.conftest import start_custody

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first


def test_a_failed_append_is_carried_by_the_closing_one(db_url: str, tmp_path: Path) -> None:
    running = start_custody(tmp_path / "c", db_url)
    try:
        ledger = running.services.ledger  # type: ignore[attr-defined]
        real = ledger.append
        failed: list[int] = []

        def flaky(events: Any, side: Any = ()) -> Any:
            if not failed and any(e.type == "upstream.requested" for e in events):
                failed.append(len(events))
                raise RuntimeError("the ledger's host sequencer went away")
            return real(events, side)

        ledger.append = flaky
        with pytest.raises(errors.ServerError) as caught:
            running.client().models.generate_content(  # type: ignore[attr-defined]
                model="gemini-2.5-flash-image", contents="a red bicycle"
            )
        assert caught.value.code == 500 and failed
        ledger.append = real
        events = running.ledger_events()
        turn = [e for e in events if e.get("turn")][-1]["turn"]
        kinds = [e["type"] for e in events if e.get("turn") == turn]
        assert kinds == ["turn.received", "policy.decided", "upstream.requested", "turn.failed"]
        ledger.issue_checkpoint()
        services = running.services
        report = verify_ledger(
            services.engine,  # type: ignore[attr-defined]
            origin=services.settings.log_origin,  # type: ignore[attr-defined]
            verifier=NoteVerifier.from_key_string(services.ledger_verifier_key),  # type: ignore[attr-defined]
            commitments=Commitments(services.engine, services.blobs),  # type: ignore[attr-defined]
        )
        assert report.ok, report.summary()
    finally:
        running.stop()


def _verify(running: Any) -> Any:
    services = running.services
    services.ledger.issue_checkpoint()
    return verify_ledger(
        services.engine,
        origin=services.settings.log_origin,
        verifier=NoteVerifier.from_key_string(services.ledger_verifier_key),
        commitments=Commitments(services.engine, services.blobs),
    )


def test_a_failed_blob_write_is_never_cited_by_the_failure_record(
    db_url: str, tmp_path: Path
) -> None:
    running = start_custody(tmp_path / "c", db_url)
    try:
        blobs = running.services.blobs  # type: ignore[attr-defined]
        real = blobs.put
        failed: list[str] = []

        def flaky(data: bytes, digest: str | None = None) -> str:
            if not failed and b"c2pa" in data:  # the signed file (or its manifest): once
                failed.append(digest or "")
                raise ConnectionError("the database closed the connection")
            return str(real(data, digest))

        blobs.put = flaky
        try:
            with pytest.raises(errors.ServerError) as caught:
                running.client().models.generate_content(  # type: ignore[attr-defined]
                    model="gemini-2.5-flash-image", contents="a red bicycle"
                )
        finally:
            blobs.put = real
        assert caught.value.code == 500 and failed
        events = running.ledger_events()
        turn = [e for e in events if e.get("turn")][-1]["turn"]
        kinds = [e["type"] for e in events if e.get("turn") == turn]
        assert kinds[-2:] == ["output.signed", "turn.failed"], kinds
        assert blobs.exists(failed[0]), "written again before the failure record cited it"
        report = _verify(running)
        assert report.commitments_checked > 0
        assert report.ok, report.summary()
        # The gateway goes on: the next turn is released and recorded whole.
        answer = running.client().models.generate_content(  # type: ignore[attr-defined]
            model="gemini-2.5-flash-image", contents="a blue bicycle"
        )
        assert answer.candidates
        assert _verify(running).ok
    finally:
        running.stop()


def test_a_pushed_back_turn_is_a_recorded_503_the_caller_can_retry(
    db_url: str, tmp_path: Path
) -> None:
    """A full append queue (``LedgerPushback``) at a turn's closing append: the caller gets 503
    with ``Retry-After``, the turn is closed as failed (not left open), and a retry succeeds."""
    running = start_custody(tmp_path / "c", db_url)
    try:
        ledger = running.services.ledger  # type: ignore[attr-defined]
        real = ledger.append
        pushed: list[int] = []

        def full(events: Any, side: Any = ()) -> Any:
            if not pushed and any(e.type == "turn.released" for e in events):
                pushed.append(len(events))
                raise LedgerPushback(1500, queued_entries=16_384, queued_bytes=1 << 20)
            return real(events, side)

        ledger.append = full
        url = f"{running.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}]}
        headers = {"x-goog-api-key": running.keys["editor"]}
        try:
            refused = httpx.post(url, json=body, headers=headers, timeout=120)
        finally:
            ledger.append = real
        assert pushed and refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["details"][0]["reason"] == "LEDGER_PUSHBACK"
        turn = refused.headers["x-custody-turn"]
        kinds = [e["type"] for e in running.ledger_events() if e.get("turn") == turn]
        assert kinds[0] == "turn.received" and kinds[-1] == "turn.failed", kinds
        assert "turn.released" not in kinds
        retried = httpx.post(url, json=body, headers=headers, timeout=120)
        assert retried.status_code == 200, retried.text
        report = _verify(running)
        assert report.ok, report.summary()
    finally:
        running.stop()


def _turn_frames_in_garbage() -> list[str]:
    """Frames of Custody's code that only a reference cycle keeps (collected now, kept aside).

    pytest's log capture keeps each record, and an exception's record keeps its traceback, so
    those records are dropped first: in the gateway nothing keeps them."""
    for logger in (logging.getLogger(), logging.getLogger("custody")):
        for handler in logger.handlers:
            if hasattr(handler, "records") and hasattr(handler, "reset"):
                handler.reset()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return [
            f"{o.f_code.co_name} ({o.f_code.co_filename})"
            for o in gc.garbage
            if isinstance(o, types.FrameType)
            and ("/governance/" in o.f_code.co_filename or "/storage/" in o.f_code.co_filename)
            and "/upstream/emulator/" not in o.f_code.co_filename  # the stand-in, not the gateway
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_a_blob_store_that_keeps_failing_answers_each_turn_with_the_envelope(
    db_url: str, tmp_path: Path
) -> None:
    """The signed file cannot be stored, and neither can it be by the failure record's retry
    (a full disk): each caller still gets Gemini's 500 envelope naming its turn, each turn is
    closed at once as interrupted (``failure_not_recorded``) with what the ledger holds, no
    turn's memory is left in a reference cycle, and once the store is back the gateway
    releases turns again and the ledger verifies."""
    running = start_custody(tmp_path / "c", db_url)
    try:
        blobs = running.services.blobs  # type: ignore[attr-defined]
        real = blobs.put
        refused: list[str] = []

        def full(data: bytes, digest: str | None = None) -> str:
            if b"c2pa" in data:  # the signed file and its manifest, every time
                refused.append(digest or "")
                raise OSError(errno.ENOSPC, "No space left on device")
            return str(real(data, digest))

        url = f"{running.base_url}/v1beta/models/gemini-2.5-flash-image:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}]}
        headers = {"x-goog-api-key": running.keys["editor"]}
        _turn_frames_in_garbage()  # what earlier work left
        blobs.put = full
        gc.disable()  # else a collection during the turns could free a cycle before it is seen
        try:
            answers = [httpx.post(url, json=body, headers=headers, timeout=120) for _ in range(2)]
            held = _turn_frames_in_garbage()
        finally:
            gc.enable()
            blobs.put = real
        assert len(refused) >= 4, "each turn's write and the failure record's retry both failed"
        turns = []
        for answer in answers:
            assert answer.status_code == 500, answer.text
            error = answer.json()["error"]
            assert error["code"] == 500 and error["status"] == "INTERNAL"
            assert error["details"][0]["reason"] == "INTERNAL_ERROR"
            turns.append(answer.headers["x-custody-turn"])
            assert turns[-1] in error["message"]
        assert held == [], f"failed turns kept in reference cycles: {held[:8]}"
        events = running.ledger_events()
        for turn in turns:  # closed at once with what the ledger holds, not left open
            mine = [e for e in events if e.get("turn") == turn]
            kinds = [e["type"] for e in mine]
            assert kinds[0] == "turn.received" and kinds[-1] == "turn.interrupted", kinds
            assert "turn.released" not in kinds and "output.signed" not in kinds, kinds
            assert mine[-1]["body"]["reason"] == "failure_not_recorded"
        engine = running.services.engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT turn_id, status, outcome, error FROM turns WHERE turn_id IN :t"
                ).bindparams(bindparam("t", expanding=True)),
                {"t": turns},
            ).all()
        assert sorted(r[0] for r in rows) == sorted(turns)
        assert {(r[1], r[2]) for r in rows} == {("interrupted", "failure_not_recorded")}
        assert all("failure record could not be stored" in r[3] for r in rows)
        assert find_open_turns(engine) == []
        again = httpx.post(url, json=body, headers=headers, timeout=120)
        assert again.status_code == 200, again.text
        report = _verify(running)
        assert report.ok, report.summary()
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("contents", "model", "status"),
    [
        ("a red bicycle", "gemini-2.0-flash", 403),  # the request gate denies the model
        ("a red bicycle [emulator:fault=400]", "gemini-2.5-flash-image", 400),  # upstream error
        ("a red bicycle [emulator:fault=malformed]", "gemini-2.5-flash-image", 502),
        ("a red bicycle [emulator:fault=badimage]", "gemini-2.5-flash-image", 502),
    ],
    ids=["denied", "upstream-400", "upstream-malformed", "upstream-badimage"],
)
def test_a_refused_or_failed_turn_leaves_no_reference_cycle(
    db_url: str, tmp_path: Path, contents: str, model: str, status: int
) -> None:
    """Every way a turn ends with an error frees the turn when the answer is sent: no frame of
    the turn (holding its request, the upstream's answer, its outputs) waits for the cycle
    collector, which under load ran only every few dozen turns."""
    running = start_custody(tmp_path / "c", db_url)
    try:
        url = f"{running.base_url}/v1beta/models/{model}:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": contents}]}]}
        headers = {"x-goog-api-key": running.keys["editor"]}
        httpx.post(url, json=body, headers=headers, timeout=120)  # warm: imports, caches
        _turn_frames_in_garbage()
        gc.disable()
        try:
            answer = httpx.post(url, json=body, headers=headers, timeout=120)
            held = _turn_frames_in_garbage()
        finally:
            gc.enable()
        assert answer.status_code == status, answer.text
        assert answer.headers["x-custody-turn"]
        assert held == [], f"the failed turn kept in reference cycles: {held[:8]}"
    finally:
        running.stop()
