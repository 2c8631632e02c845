"""The authorship report of a multi-turn native session: an upload with its provenance, a masked
edit, a second edit held for review and approved, a rollback to the upload, a label. The JSON
and HTML list every human act in order, each ledger reference is an entry of the type it names
(read back from the ledger), the PDF opens in pypdf with the draft wording, the CLI writes both,
and another tenant gets 404."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pypdf import PdfReader

from governance.review import desk_for
from storage.ledger.leaf import decode_leaf
from tests.conftest import RunningCustody, start_custody
from tests.console_browser import sign_in
from tests.console_helpers import make_account
from tests.evidence_helpers import cli, custody_env, policy_dir
from tests.review_helpers import add_member, decide
from tests.session_helpers import api, b64, gateway, mask_png, png

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

HUMAN_ORDER = [
    "session",
    "upload",
    "prompt",
    "mask",
    "prompt",
    "review",
    "rollback",
    "label",
    "prompt",
    "selection",
]


def _client(custody: Any, role: str) -> httpx.Client:
    return httpx.Client(
        base_url=custody.base_url, headers={"x-goog-api-key": custody.keys[role]}, timeout=120
    )


def _session(custody: Any) -> dict[str, str]:
    """Drive the session; the ids of what it made."""
    editor = api(custody)
    add_member(custody, "reviewers", "reviewer@acme")
    session = editor.post("/api/v1/sessions", json={"title": "sofa"}).json()["session"]
    upload = editor.post(
        f"/api/v1/sessions/{session}/images",
        json={
            "data": b64(png(96, 64, (180, 60, 60))),
            "mime_type": "image/png",
            "source": "studio shoot 2026-11",
            "rights_holder": "Acme Studio",
            "licence": "all rights reserved",
            "identifiable_people": False,
        },
    ).json()["version"]
    first = editor.post(
        f"/api/v1/sessions/{session}/turns",
        json={
            "instruction": "make the sofa teal",
            "targets": [{"version": upload, "mask": b64(mask_png(96, 64))}],
        },
    ).json()["results"][0]
    assert first["status"] == "released", first
    out: dict[str, Any] = {}

    def held() -> None:
        out["r"] = editor.post(
            f"/api/v1/sessions/{session}/turns",
            json={
                "instruction": "needs-a-human: flatten the fabric",
                "targets": [{"version": first["versions"][0]}],
            },
        )

    thread = threading.Thread(target=held, daemon=True)
    thread.start()
    reviewer = _client(custody, "reviewer")
    desk = desk_for(custody.services)
    task, end = None, time.monotonic() + 60
    while task is None and time.monotonic() < end:
        found = reviewer.get("/api/v1/reviews").json()["reviews"]
        task = desk.get(found[0]["id"]) if found else None
        time.sleep(0.1)
    assert task is not None, "the held turn opened no review task"
    assert decide(custody, custody.keys["reviewer"], task, "approve", "fine").status_code == 200
    thread.join(60)
    second = out["r"].json()["results"][0]
    assert second["status"] == "released", second
    back = editor.post(f"/api/v1/sessions/{session}/rollback", json={"version": upload})
    assert back.status_code == 200, back.text
    rolled = back.json()["versions"][0]
    labelled = editor.post(
        f"/api/v1/sessions/{session}/versions/{rolled}/labels", json={"label": "final pick"}
    )
    assert labelled.status_code == 200, labelled.text
    branch = editor.post(  # back on the masked edit: a branch, not the newest version
        f"/api/v1/sessions/{session}/turns",
        json={"instruction": "add a cushion", "targets": [{"version": first["versions"][0]}]},
    ).json()["results"][0]
    assert branch["status"] == "released", branch
    return {
        "branch": branch["versions"][0],
        "session": session,
        "upload": upload,
        "first": first["versions"][0],
        "second": second["versions"][0],
        "rolled": rolled,
    }


def _check_refs(custody: Any, report: dict[str, Any], auditor: httpx.Client) -> None:
    ledger = custody.services.ledger
    proofs_checked = 0
    for act in report["acts"]:
        assert act["entries"], act
        for ref in act["entries"]:
            leaf = decode_leaf(ledger.entry(ref["index"]).leaf)
            assert leaf["type"] == ref["type"], (act, leaf["type"])
            assert leaf["session"] in (report["session"], None) or leaf.get("turn") == act["turn"]
            if act["turn"] is not None:  # a lineage entry names its turn in its body
                assert (leaf.get("turn") or leaf["body"].get("turn")) == act["turn"], act
            if proofs_checked < 3:  # the routes the report names answer for the entry
                entry = auditor.get(ref["entry"]).json()["entries"][0]
                assert entry["index"] == ref["index"]
                proof = auditor.get(ref["proof"])
                assert proof.status_code == 200, proof.text
                proofs_checked += 1
        if act["turn"]:
            turn_proof = auditor.get(act["entries"][0]["turn_proof"])
            assert turn_proof.status_code == 200, turn_proof.text
            indexes = {e["index"] for e in turn_proof.json()["entries"]}
            mine = {e["index"] for e in act["entries"] if e["type"] != "lineage.recorded"}
            assert mine <= indexes, (act, indexes)


def test_report_of_a_multi_turn_session(tmp_path: Path, db_url: str) -> None:
    custody = gateway(tmp_path, db_url, policy_dir=policy_dir(tmp_path))
    try:
        ids = _session(custody)
        session = ids["session"]
        auditor = _client(custody, "auditor")
        time.sleep(0.5)  # a checkpoint covers the last entries (checkpoint_every_ms=200)
        custody.services.ledger.issue_checkpoint()
        report = auditor.get(f"/api/v1/sessions/{session}/authorship").json()
        human = [a for a in report["acts"] if a["who"] == "human"]
        assert [a["kind"] for a in human] == HUMAN_ORDER, [a["kind"] for a in human]
        indexes = [a["entries"][0]["index"] for a in report["acts"]]
        assert indexes == sorted(indexes), "acts in ledger order"
        assert human[1]["provenance"]["rights_holder"] == "Acme Studio"
        assert human[2]["prompt"]["text"].startswith("make the sofa teal")
        assert human[4]["prompt"]["text"].startswith("needs-a-human: flatten the fabric")
        assert human[5]["reviewer"] and human[5]["decision"] == "approve"
        assert human[6]["chosen"] == ids["upload"]
        assert human[6]["rejected"] == [ids["second"], ids["first"]]
        assert human[7]["label"] == "final pick"
        assert human[9]["version"] == ids["first"] and human[9]["rejected"] == [ids["rolled"]]
        ai = [a for a in report["acts"] if a["who"] == "ai"]
        assert [a["versions"] for a in ai] == [[ids["first"]], [ids["second"]], [ids["branch"]]]
        assert [s["model"] for s in report["ai_systems"]] == ["gemini-2.5-flash-image"]
        assert report["ai_systems"][0]["model_versions"], "the model version the upstream named"
        _check_refs(custody, report, auditor)

        # The newest version is the branch (an unmasked edit): every pixel generated; the
        # rollback to the upload: every pixel human-provided.
        assert report["final_version"] == ids["branch"]
        assert report["attribution"]["percent"]["generated_whole"] == 100.0
        rolled = auditor.get(
            f"/api/v1/sessions/{session}/authorship", params={"version": ids["rolled"]}
        ).json()["attribution"]["percent"]
        assert rolled["human_provided"] == 100.0, rolled
        assert all(v["thumbnail"].startswith("data:image/png") for v in report["versions"])
        # The masked edit: the mask's white half generated, the rest the upload's.
        masked = auditor.get(
            f"/api/v1/sessions/{session}/authorship", params={"version": ids["first"]}
        ).json()["attribution"]["percent"]
        assert 45 < masked["generated_inside_masks"] < 55, masked
        assert masked["generated_inside_masks"] + masked["human_provided"] == 100.0
        whole = auditor.get(
            f"/api/v1/sessions/{session}/authorship", params={"version": ids["second"]}
        ).json()["attribution"]["percent"]
        assert whole["generated_whole"] == 100.0, whole
        draft = report["draft"]
        assert "DRAFT FOR COUNSEL" in draft["notice"]
        assert "copyrightable" not in (draft["author_created"] + draft["material_excluded"])

        # Commitments only: no prompt text, no thumbnails.
        sealed = auditor.get(
            f"/api/v1/sessions/{session}/authorship", params={"content": "commitments"}
        ).json()
        prompts = [a["prompt"] for a in sealed["acts"] if a["kind"] == "prompt"]
        assert all("text" not in p and p["commitment"] for p in prompts)
        assert not any(v["thumbnail"] for v in sealed["versions"])

        html = auditor.get(f"/api/v1/sessions/{session}/authorship", params={"format": "html"})
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert html.text.count('class="human"') == len(HUMAN_ORDER)
        assert "cdn" not in html.text.lower() and "<script" not in html.text
        assert draft["author_created"].split(";")[0] in html.text.replace("&#39;", "'")

        pdf = auditor.get(f"/api/v1/sessions/{session}/authorship", params={"format": "pdf"})
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        text = " ".join((p.extract_text() or "") for p in PdfReader(io.BytesIO(pdf.content)).pages)
        flat = " ".join(text.split())
        assert "DRAFT FOR COUNSEL" in flat and "Author Created (draft)" in flat
        assert "Material Excluded (draft)" in flat

        # The owner reads it; a bad format is a recorded 400; another tenant gets 404.
        assert api(custody).get(f"/api/v1/sessions/{session}/authorship").status_code == 200
        bad = auditor.get(f"/api/v1/sessions/{session}/authorship", params={"format": "docx"})
        assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
        other = _client(custody, "other-tenant-editor")
        assert other.get(f"/api/v1/sessions/{session}/authorship").status_code == 404
        assert (
            other.get(
                f"/api/v1/sessions/{session}/authorship", params={"format": "pdf"}
            ).status_code
            == 404
        )
        missing = auditor.get(
            f"/api/v1/sessions/{session}/authorship", params={"version": "ver_" + "0" * 24}
        )
        assert missing.status_code == 404

        env = custody_env(custody)
        made = cli("authorship", session, "--out", str(tmp_path / "report.pdf"), env=env)
        assert made.returncode == 0, made.stderr
        assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF")
        made = cli("authorship", ids["second"], "--out", str(tmp_path / "r.html"), env=env)
        assert made.returncode == 0, made.stderr
        assert "Authorship report" in (tmp_path / "r.html").read_text()
    finally:
        custody.stop()


NON_LATIN = "сделай диван бирюзовым, κάνε τον καναπέ μπλε, اجعل الأريكة زرقاء"


def test_the_pdf_prints_prompts_in_other_scripts_as_written(tmp_path: Path) -> None:
    """Cyrillic, Greek and Arabic (right to left) come back from the PDF's text as typed: the
    report embeds a Unicode font and shapes the text, where Latin-1 core fonts printed '?'."""
    custody = gateway(tmp_path, "")
    try:
        editor = api(custody)
        session = editor.post("/api/v1/sessions", json={"title": "диван"}).json()["session"]
        upload = editor.post(
            f"/api/v1/sessions/{session}/images",
            json={"data": b64(png(96, 64)), "mime_type": "image/png", "source": "эскиз"},
        ).json()["version"]
        turn = editor.post(
            f"/api/v1/sessions/{session}/turns",
            json={"instruction": NON_LATIN, "targets": [{"version": upload}]},
        ).json()["results"][0]
        assert turn["status"] == "released", turn
        pdf = _client(custody, "auditor").get(
            f"/api/v1/sessions/{session}/authorship", params={"format": "pdf"}
        )
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        text = " ".join((p.extract_text() or "") for p in PdfReader(io.BytesIO(pdf.content)).pages)
        flat = " ".join(text.split())
        for phrase in NON_LATIN.split(", "):  # each script's run in reading order
            assert phrase in flat, (phrase, flat[:2000])
        assert '("диван")' in flat and "эскиз" in flat
        assert "\ufffd" not in flat
    finally:
        custody.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCustody]:
    """A gateway started before the browser (Playwright's sync API holds the test's loop)."""
    running = start_custody(tmp_path_factory.mktemp("authorship-browser") / "custody")
    try:
        make_account(running, "audrey", "auditor")
        yield running
    finally:
        running.stop()


@pytest.mark.browser
def test_the_console_session_page_links_the_report(
    tmp_path: Path, served: RunningCustody, page: Any
) -> None:
    editor = api(served)
    session = editor.post("/api/v1/sessions", json={}).json()["session"]
    upload = editor.post(
        f"/api/v1/sessions/{session}/images",
        json={"data": b64(png(96, 64)), "mime_type": "image/png", "source": "a sketch"},
    ).json()["version"]
    turn = editor.post(
        f"/api/v1/sessions/{session}/turns",
        json={"instruction": "ink it", "targets": [{"version": upload}]},
    ).json()["results"][0]
    assert turn["status"] == "released", turn
    sign_in(page, served.base_url, "audrey", path=f"/console/sessions/{session}")
    page.click("#authorship-report")
    assert page.url == f"{served.base_url}/console/sessions/{session}/authorship"
    assert page.locator("h1").inner_text() == "Authorship report"
    kinds = [
        page.locator("tr.human").nth(n).get_attribute("data-kind")
        for n in range(page.locator("tr.human").count())
    ]
    assert kinds == ["session", "upload", "prompt"], kinds
    assert page.locator("tr.ai").count() == 1
    assert "DRAFT FOR COUNSEL" in page.inner_text(".draft")
    pdf = page.request.get(f"{served.base_url}/console/sessions/{session}/authorship?format=pdf")
    assert pdf.ok and pdf.body().startswith(b"%PDF")
    page.screenshot(path=str(tmp_path / "authorship.png"), full_page=True)
