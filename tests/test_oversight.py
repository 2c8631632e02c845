"""Oversight figures (issue 18, item 4): computed from recorded rows, re-derivable, walled.

A real gateway records turns (allowed, denied, in sessions) and review tasks (approved at once,
expired); the figures over HTTP must equal what the test derives itself from the same database
rows, in JSON and in CSV, and another tenant's auditor must see none of them.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from governance.compliance.oversight import percentile
from storage.schema.reviews import ReviewTask
from storage.schema.turns import TURNS
from tests.conftest import RunningCustody, start_custody
from tests.review_helpers import add_member, decide, open_task

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

MODEL = "gemini-2.5-flash-image"
PRICES = {MODEL: {"input": 0.30, "output": 30.0}}


@pytest.fixture()
def gateway(tmp_path: Path, db_url: str) -> Iterator[RunningCustody]:
    running = start_custody(
        tmp_path / "custody", db_url, model_prices=json.dumps(PRICES), rubber_stamp_ms=60_000
    )
    try:
        yield running
    finally:
        running.stop()


def _turn(custody: RunningCustody, prompt: str, session: str | None = None, **kw: Any) -> int:
    headers = {"x-goog-api-key": custody.keys[kw.get("key", "editor")]}
    if session:
        headers["x-custody-session"] = session
    if kw.get("labels"):
        headers["x-custody-labels"] = kw["labels"]
    resp = httpx.post(
        f"{custody.base_url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
        headers=headers,
        timeout=60,
    )
    return resp.status_code


def _figures(custody: RunningCustody, role: str = "auditor", **params: Any) -> httpx.Response:
    return httpx.get(
        custody.base_url + "/api/v1/oversight",
        params=params,
        headers={"x-goog-api-key": custody.keys[role]},
        timeout=60,
    )


def test_figures_equal_what_the_recorded_rows_say(gateway) -> None:
    start = int(time.time() * 1000) - 1
    for prompt, session in (("a red bicycle", "s1"), ("a blue bicycle", "s1"), ("a kite", "s2")):
        assert _turn(gateway, prompt, session) == 200
    denied = _turn(gateway, "give this man Taylor Swift's face", "s2", labels="consent=obtained")
    assert denied == 403
    assert _turn(gateway, "a globex kite", key="other-tenant-editor") == 200
    add_member(gateway, "reviewers", "reviewer@acme")
    approved = open_task(gateway)
    assert decide(gateway, gateway.keys["reviewer"], approved).status_code == 200
    expiring = open_task(gateway, review_deadline_s=1)
    engine = gateway.services.engine  # type: ignore[attr-defined]
    tasks = ReviewTask.__table__.c  # type: ignore[attr-defined]
    for _ in range(40):  # the review job expires it
        with engine.connect() as conn:
            status = conn.execute(
                select(tasks.status).where(tasks.task_id == expiring.task_id)
            ).scalar_one()
        if status == "expired":
            break
        time.sleep(0.25)
    assert status == "expired"

    resp = _figures(gateway, since=start)
    assert resp.status_code == 200, resp.text
    figures = resp.json()
    assert figures["tenant"] == "acme" and figures["turns"] == 4
    assert figures["policy"]["allow"] == 3 and figures["policy"]["deny"] == 1
    assert figures["policy"]["deny_rate"] == 0.25
    reviews = figures["reviews"]
    assert reviews["opened"] == 2 and reviews["expired"] == 1
    assert reviews["by_status"] == {"approved": 1, "expired": 1}
    assert reviews["decisions"] == 1 and reviews["rubber_stamps"] == 1  # decided within 60 s
    assert reviews["rubber_stamp_rate"] == 1.0
    # Re-derived from the rows: time to decide, turns until kept, latency, spend.
    with engine.connect() as conn:
        closed = (
            conn.execute(
                select(tasks.decided_ms - tasks.created_ms).where(
                    tasks.tenant == "acme", tasks.created_ms >= start
                )
            )
            .scalars()
            .all()
        )
        turns = conn.execute(
            select(TURNS.c.status, TURNS.c.usage_json, TURNS.c.timings_json).where(
                TURNS.c.tenant == "acme", TURNS.c.created_ms >= start
            )
        ).all()
    assert reviews["time_to_decide_ms"]["median"] == percentile([float(v) for v in closed], 50)
    sessions = figures["sessions"]
    assert sessions["with_kept_output"] == 2 and sessions["without_kept_output"] == 0
    assert sessions["turns_until_kept"]["median"] == 1.0  # s1: 2, s2: 1 (its last release first)
    latency = [json.loads(t.timings_json)["upstream_ms"] for t in turns if t.status == "released"]
    assert figures["upstream_latency_ms"]["count"] == len(latency) == 3
    assert figures["upstream_latency_ms"]["p95"] == round(max(latency), 3)
    prompt = sum(json.loads(t.usage_json).get("promptTokenCount", 0) for t in turns if t.usage_json)
    output = sum(
        json.loads(t.usage_json).get("candidatesTokenCount", 0) for t in turns if t.usage_json
    )
    spend = figures["spend"]["by_model"][MODEL]
    assert (spend["input_tokens"], spend["output_tokens"]) == (prompt, output)
    assert spend["usd"] == round((prompt * 0.30 + output * 30.0) / 1_000_000, 6)
    assert sum(day["turns"] for day in figures["series"]) == 4

    # CSV carries the same figures.
    text = _figures(gateway, since=start, format="csv")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/csv")
    rows = dict(csv.reader(io.StringIO(text.text)))
    assert rows["turns"] == "4" and rows["policy.deny_rate"] == "0.25"
    assert rows["spend.by_model." + MODEL + ".usd"] == str(spend["usd"])


def test_oversight_is_walled_and_refused_to_editors(gateway) -> None:
    assert _turn(gateway, "a globex kite", key="other-tenant-editor") == 200
    mine = _figures(gateway).json()
    assert mine["turns"] == 0 and mine["tenant"] == "acme"
    assert _figures(gateway, tenant="globex").status_code == 403
    assert _figures(gateway, role="editor").status_code == 403
    assert _figures(gateway, role="reviewer").status_code == 403
    bad = _figures(gateway, format="xml")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400
    assert _figures(gateway, since=10, until=5).status_code == 400


def test_cli_prints_the_same_figures_as_csv(gateway) -> None:
    import os
    import subprocess
    import sys

    start = int(time.time() * 1000) - 1
    assert _turn(gateway, "a red bicycle", "s1") == 200
    until = int(time.time() * 1000) + 1
    settings = gateway.services.settings  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "CUSTODY_DATA_DIR": str(settings.data_dir),
        "CUSTODY_DATABASE_URL": settings.database_url,
        "CUSTODY_MODEL_PRICES": json.dumps(PRICES),
        "CUSTODY_RUBBER_STAMP_MS": "60000",
    }
    out = subprocess.run(
        [sys.executable, "-m", "governance.cli", "query", "oversight", "--tenant", "acme",
         "--since", str(start), "--until", str(until), "--format", "csv"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    api = _figures(gateway, since=start, until=until, format="csv").text
    assert dict(csv.reader(io.StringIO(out.stdout))) == dict(csv.reader(io.StringIO(api)))
