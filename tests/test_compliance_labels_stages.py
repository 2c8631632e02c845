"""The compliance queries' ``label`` and event ``stage`` filters through the real routes (#18).

Turns are made by real calls through the built-in emulator with ``x-custody-labels``; a version
a native session turn made is labelled over the session API. An auditor then filters turns and
events by label and events by stage over HTTP, the CLI and the console. What is proven: each
filter selects exactly what it names (against the ledger's own events); rows carry their ledger
indexes and labels; a label page continues by cursor; an auditor of one tenant finds nothing of
another carrying the same label; an editor runs none of it; bad values are 400s that say what
to send; and migration 0014 backfills the version labels recorded before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import insert, select

from governance.auth.keys import create_key
from governance.ledger_vocabulary import EVENT_STAGES
from storage.db import alembic_config, make_engine
from storage.schema.sessions import SESSION_VERSIONS, VERSION_LABELS
from storage.schema.turns import TURN_LABELS, TURNS
from tests.conftest import RunningCustody, start_custody
from tests.console_helpers import ConsoleClient, make_account
from tests.session_helpers import b64, png

MODEL = "gemini-2.5-flash-image"


@pytest.fixture()
def gateway(tmp_path: Path, db_url: str) -> Iterator[RunningCustody]:
    running = start_custody(tmp_path / "custody", db_url)
    running.keys["other-tenant-auditor"] = create_key(
        running.services.engine,  # type: ignore[attr-defined]
        tenant="globex",
        actor="auditor@globex",
        roles=["auditor"],
    )
    try:
        yield running
    finally:
        running.stop()


def _turn(custody: RunningCustody, prompt: str, labels: str = "", key: str = "editor") -> str:
    headers = {"x-goog-api-key": custody.keys[key]}
    if labels:
        headers["x-custody-labels"] = labels
    resp = httpx.post(
        f"{custody.base_url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
        headers=headers,
        timeout=60,
    )
    assert resp.status_code in (200, 403, 409), resp.text  # released, denied, held
    return resp.headers["x-custody-turn"]


def get(custody: RunningCustody, path: str, role: str = "auditor", **params: Any) -> httpx.Response:
    return httpx.get(
        custody.base_url + path,
        params={k: v for k, v in params.items() if v is not None},
        headers={"x-goog-api-key": custody.keys[role]},
        timeout=60,
    )


def rows(custody: RunningCustody, path: str, role: str = "auditor", **params: Any) -> list[Any]:
    resp = get(custody, path, role=role, limit=500, **params)
    assert resp.status_code == 200, resp.text
    return resp.json()["rows"]  # type: ignore[no-any-return]


@pytest.fixture()
def recorded(gateway: RunningCustody) -> dict[str, str]:
    """Labelled turns of acme (one denied, one held), one of globex with the same label, and a
    labelled version."""
    ids = {
        "spring": _turn(gateway, "a red bicycle", "campaign=spring, asset=web"),
        "autumn": _turn(gateway, "a blue bicycle", "Campaign=autumn"),
        "bare": _turn(gateway, "a green teapot"),
        "denied": _turn(gateway, "give this man Taylor Swift's face", "campaign=spring"),
        "held": _turn(gateway, "a yellow kite", "campaign=summer, asset=production"),
        "globex": _turn(gateway, "a globex kite", "campaign=spring", key="other-tenant-editor"),
    }
    editor = httpx.Client(
        base_url=gateway.base_url, headers={"x-goog-api-key": gateway.keys["editor"]}, timeout=60
    )
    with editor:
        session = editor.post("/api/v1/sessions", json={}).json()["session"]
        upload = editor.post(
            f"/api/v1/sessions/{session}/images",
            json={"data": b64(png(64, 48, (200, 40, 40))), "mime_type": "image/png",
                  "source": "studio shoot"},
        )  # fmt: skip
        assert upload.status_code == 200, upload.text
        edit = editor.post(
            f"/api/v1/sessions/{session}/turns",
            json={
                "instruction": "make it teal",
                "targets": [{"version": upload.json()["version"]}],
            },
        )
        assert edit.status_code == 200, edit.text
        result = edit.json()["results"][0]
        version = result["versions"][0]
        for _ in range(2):  # labelled twice: one label row, not a failure
            labelled = editor.post(
                f"/api/v1/sessions/{session}/versions/{version}/labels",
                json={"label": "approved for campaign"},
            )
            assert labelled.status_code == 200, labelled.text
    ids["version_turn"] = next(
        v["turn"] for v in editor_graph(gateway, session)["versions"] if v["version"] == version
    )
    return ids


def editor_graph(custody: RunningCustody, session: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{custody.base_url}/api/v1/sessions/{session}",
        headers={"x-goog-api-key": custody.keys["editor"]},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


@pytest.mark.pg_at_head
def test_turns_by_label_are_exactly_the_labelled_turns(gateway, recorded) -> None:
    spring = rows(gateway, "/api/v1/query/turns", label="campaign=spring")
    assert [r["turn_id"] for r in spring] == [recorded["denied"], recorded["spring"]]
    assert spring[1]["labels"] == {"asset": "web", "campaign": "spring"}
    for row in spring:  # each row still carries its ledger indexes
        assert row["ledger_indexes"] == [e["index"] for e in gateway.ledger_events(row["turn_id"])]
    # Names are matched as the policy reads them (lowercased); values exactly.
    assert [
        r["turn_id"] for r in rows(gateway, "/api/v1/query/turns", label="CAMPAIGN=autumn")
    ] == [recorded["autumn"]]
    assert rows(gateway, "/api/v1/query/turns", label="campaign=Autumn") == []
    assert [
        r["turn_id"]
        for r in rows(gateway, "/api/v1/query/turns", label="campaign=spring", policy="deny")
    ] == [recorded["denied"]]
    assert [
        r["turn_id"]
        for r in rows(gateway, "/api/v1/query/turns", label="campaign=spring", status="released")
    ] == [recorded["spring"]]
    bare = next(r for r in rows(gateway, "/api/v1/query/turns") if r["turn_id"] == recorded["bare"])
    assert bare["labels"] == {} and bare["version_labels"] == []

    # A version label is its turn's @version label.
    versioned = rows(gateway, "/api/v1/query/turns", label="@version=approved for campaign")
    assert [r["turn_id"] for r in versioned] == [recorded["version_turn"]]
    assert versioned[0]["version_labels"] == ["approved for campaign"]

    # Pages of one label continue by cursor.
    first = get(gateway, "/api/v1/query/turns", label="campaign=spring", limit=1).json()
    assert [r["turn_id"] for r in first["rows"]] == [recorded["denied"]] and first["next_cursor"]
    second = get(
        gateway,
        "/api/v1/query/turns",
        label="campaign=spring",
        limit=1,
        cursor=first["next_cursor"],
    ).json()
    assert [r["turn_id"] for r in second["rows"]] == [recorded["spring"]]
    assert second["next_cursor"] is None

    bad = get(gateway, "/api/v1/query/turns", label="campaign")
    assert bad.status_code == 400, bad.text
    assert "name=value" in bad.json()["error"]["message"]


@pytest.mark.pg_at_head
def test_events_by_label_are_the_events_of_the_labelled_turns(gateway, recorded) -> None:
    found = rows(gateway, "/api/v1/query/events", label="campaign=spring")
    expected = sorted(
        (e["index"] for t in ("spring", "denied") for e in gateway.ledger_events(recorded[t])),
        reverse=True,
    )
    assert [r["index"] for r in found] == expected
    typed = rows(gateway, "/api/v1/query/events", label="campaign=spring", type="policy.decided")
    assert {r["turn"] for r in typed} == {recorded["spring"], recorded["denied"]}
    assert all(r["type"] == "policy.decided" for r in typed)


@pytest.mark.pg_at_head
def test_events_by_stage_are_the_types_of_that_stage(gateway, recorded) -> None:
    acme = [e for e in gateway.ledger_events() if e["tenant"] == "acme"]
    for stage, types in EVENT_STAGES.items():
        found = rows(gateway, "/api/v1/query/events", stage=stage)
        expected = sorted((e["index"] for e in acme if e["type"] in types), reverse=True)
        assert [r["index"] for r in found] == expected, stage
    assert rows(gateway, "/api/v1/query/events", stage="sign"), "released turns signed outputs"
    held = rows(gateway, "/api/v1/query/events", stage="review", label="asset=production")
    assert {r["turn"] for r in held} == {recorded["held"]}
    assert "review.requested" in {r["type"] for r in held}
    refusals = rows(gateway, "/api/v1/query/events", stage="refusal", label="campaign=spring")
    assert [(r["turn"], r["type"]) for r in refusals] == [(recorded["denied"], "turn.failed")]
    # Paged: a stage of several types continues by cursor without repeats.
    seen, cursor = [], None
    while True:
        page = get(gateway, "/api/v1/query/events", stage="forward", limit=2, cursor=cursor).json()
        seen += [r["index"] for r in page["rows"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [r["index"] for r in rows(gateway, "/api/v1/query/events", stage="forward")]

    unknown = get(gateway, "/api/v1/query/events", stage="bake")
    assert unknown.status_code == 400 and "receive" in unknown.json()["error"]["message"]
    clash = get(gateway, "/api/v1/query/events", stage="sign", type="policy.decided")
    assert clash.status_code == 400 and "output.signed" in clash.json()["error"]["message"]


@pytest.mark.pg_at_head
def test_label_and_stage_queries_are_walled_and_refused_to_editors(gateway, recorded) -> None:
    for path, params in (
        ("/api/v1/query/turns", {"label": "campaign=spring"}),
        ("/api/v1/query/events", {"label": "campaign=spring"}),
        ("/api/v1/query/events", {"stage": "release"}),
    ):
        acme = rows(gateway, path, **params)
        assert acme and all(r["tenant"] == "acme" for r in acme)
        assert recorded["globex"] not in {r.get("turn_id") or r.get("turn") for r in acme}
        globex = rows(gateway, path, role="other-tenant-auditor", **params)
        assert globex and all(r["tenant"] == "globex" for r in globex)
        assert get(gateway, path, tenant="globex", **params).status_code == 403
        for role in ("editor", "reviewer"):
            assert get(gateway, path, role=role, **params).status_code == 403
    searched = httpx.post(
        gateway.base_url + "/api/v1/query/prompts",
        json={"query": "bicycle", "label": "campaign=spring"},
        headers={"x-goog-api-key": gateway.keys["auditor"]},
        timeout=60,
    )
    assert searched.status_code == 200, searched.text
    assert [r["turn_id"] for r in searched.json()["rows"]] == [recorded["spring"]]


@pytest.mark.pg_at_head
def test_cli_filters_by_label_and_stage(gateway, recorded) -> None:
    settings = gateway.services.settings  # type: ignore[attr-defined]
    env = {
        "CUSTODY_DATA_DIR": str(settings.data_dir),
        "CUSTODY_DATABASE_URL": settings.database_url,
        "PATH": "/usr/bin:/bin",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "governance.cli", "query", *args],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    out = cli("turns", "--tenant", "acme", "--label", "campaign=spring", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["turn_id"] for r in json.loads(out.stdout)["rows"]] == [
        recorded["denied"],
        recorded["spring"],
    ]
    out = cli("events", "--tenant", "acme", "--stage", "sign", "--json")
    assert out.returncode == 0, out.stderr
    signed = json.loads(out.stdout)["rows"]
    assert signed and {r["type"] for r in signed} == {"output.signed"}
    bad = cli("turns", "--label", "no-equals-sign")
    assert bad.returncode == 2 and "name=value" in bad.stderr


@pytest.mark.pg_at_head
def test_console_filters_turns_by_label_and_events_by_stage(gateway, recorded) -> None:
    make_account(gateway, "alice", "auditor")
    make_account(gateway, "rita", "reviewer")
    console = ConsoleClient(gateway)
    try:
        assert console.sign_in("alice").status_code == 303
        page = console.get("/console/queries", params={"label": "campaign=spring"})
        assert page.status_code == 200, page.text
        assert recorded["spring"] in page.text and recorded["denied"] in page.text
        assert recorded["autumn"] not in page.text and recorded["globex"] not in page.text
        assert "asset=web" in page.text
        events = console.get("/console/queries", params={"kind": "events", "stage": "sign"})
        assert events.status_code == 200, events.text
        assert "output.signed" in events.text and "policy.decided" not in events.text
        assert recorded["globex"] not in events.text
        bad = console.get("/console/queries", params={"kind": "events", "stage": "bake"})
        assert bad.status_code == 400
    finally:
        console.close()
    reviewer = ConsoleClient(gateway)
    try:
        assert reviewer.sign_in("rita").status_code == 303
        refused = reviewer.get("/console/queries", params={"kind": "events", "stage": "sign"})
        assert refused.status_code == 403
    finally:
        reviewer.close()


def test_migration_backfills_recorded_version_labels(db_url: str) -> None:
    cfg = alembic_config(db_url)
    command.upgrade(cfg, "0013_sign_in_misses")
    engine = make_engine(db_url)
    turn = {
        "turn_id": "t" * 32, "tenant": "acme", "actor": "editor@acme", "session_id": "ses_x",
        "model": MODEL, "api_version": "v1beta", "method": "generateContent",
        "status": "released", "upstream": "emulator", "created_ms": 1_780_000_000_000,
    }  # fmt: skip
    version = {
        "version_id": "ver_1", "session_id": "ses_x", "image_id": "img_1", "tenant": "acme",
        "actor": "editor@acme", "turn_id": turn["turn_id"], "kind": "edit", "sha256": "0" * 64,
        "commitment": "c", "mime_type": "image/png", "created_ms": turn["created_ms"] + 5,
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(TURNS), [turn])
        conn.execute(insert(SESSION_VERSIONS), [version])
        conn.execute(
            insert(VERSION_LABELS),
            [
                {"session_id": "ses_x", "version_id": "ver_1", "label": text, "actor": a,
                 "created_ms": turn["created_ms"] + 9}
                for text, a in (("final", "a@acme"), ("final", "b@acme"), ("hero", "a@acme"))
            ],
        )  # fmt: skip
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        got = conn.execute(select(TURN_LABELS).order_by(TURN_LABELS.c.value)).all()
    engine.dispose()
    assert [tuple(r) for r in got] == [
        (turn["turn_id"], "@version", "final", "acme", turn["created_ms"]),
        (turn["turn_id"], "@version", "hero", "acme", turn["created_ms"]),
    ]
