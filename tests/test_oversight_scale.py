"""Oversight figures aggregated by the database equal the row-by-row definition (issue 18).

``governance.compliance.oversight.oversight_figures`` answers from GROUP BY and window queries so
that it scales to 10⁶ turns (``bench/query_bench.py`` measures it). This test keeps the first,
row-by-row implementation (every turn and task of the period read and counted in Python) as the
definition and holds the two equal on both databases, over synthetic turns and reviews varied in
every way a figure reads: usage in either key spelling, floats, strings and none; timings with
fractional, missing and non-numeric values; sessions absent or empty; interrupted turns; every
review status; and several periods and tenants, including an empty one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update

from bench.query_data import BASE_MS, synthesise_reviews, synthesise_turns
from governance.compliance.oversight import (
    CLOSED,
    DAY_MS,
    Period,
    _rate,
    _summary,
    oversight_figures,
)
from governance.compliance.queries import DENY_REASONS, REVIEW_DECISIONS, REVIEW_TASKS
from storage.db import make_engine, migrate
from storage.schema.turns import TURNS

pytestmark = pytest.mark.pg_at_head  # what uses PostgreSQL here migrates it first

TURN_COUNT = 3000
PRICES = {"gemini-2.5-flash-image": {"input": 0.3, "output": 30.0}}

# -- the definition: the first implementation, row by row --------------------------------------


def _turn_rows(engine: Engine, period: Period) -> list[Any]:
    t = TURNS.c
    conds = [t.created_ms >= period.since_ms, t.created_ms < period.until_ms]
    if period.tenant is not None:
        conds.append(t.tenant == period.tenant)
    query = select(
        t.turn_id, t.session_id, t.model, t.status, t.outcome, t.usage_json, t.timings_json,
        t.created_ms,
    ).where(*conds).order_by(t.created_ms, t.turn_id)  # fmt: skip
    with engine.connect() as conn:
        return list(conn.execute(query))


def _review_rows(engine: Engine, period: Period) -> tuple[list[Any], list[Any]]:
    r, d = REVIEW_TASKS.c, REVIEW_DECISIONS.c
    conds = [r.created_ms >= period.since_ms, r.created_ms < period.until_ms]
    if period.tenant is not None:
        conds.append(r.tenant == period.tenant)
    with engine.connect() as conn:
        tasks = list(
            conn.execute(
                select(r.task_id, r.turn_id, r.status, r.created_ms, r.decided_ms).where(*conds)
            )
        )
        decisions = list(
            conn.execute(
                select(d.decision, d.time_ms, r.created_ms)
                .select_from(REVIEW_DECISIONS.join(REVIEW_TASKS, r.task_id == d.task_id))
                .where(*conds)
            )
        )
    return tasks, decisions


def _tokens(usage_json: str | None) -> tuple[int, int]:
    if not usage_json:
        return 0, 0
    try:
        usage = json.loads(usage_json)
    except json.JSONDecodeError:
        return 0, 0
    if not isinstance(usage, dict):
        return 0, 0

    def count(*names: str) -> int:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int | float):
                return int(value)
        return 0

    return count("promptTokenCount", "prompt_token_count"), count(
        "candidatesTokenCount", "candidates_token_count"
    )


def figures_row_by_row(
    engine: Engine,
    period: Period,
    *,
    rubber_stamp_ms: int,
    prices: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The figures as first defined: every row of the period read and counted in Python."""
    turns = _turn_rows(engine, period)
    tasks, decisions = _review_rows(engine, period)
    held = {task.turn_id for task in tasks}
    counts = {"allow": 0, "deny": 0, "review": 0, "other": 0}
    series: dict[int, dict[str, int]] = defaultdict(
        lambda: {"turns": 0, "allow": 0, "deny": 0, "review": 0}
    )
    sessions: dict[str, list[Any]] = defaultdict(list)
    latency: list[float] = []
    tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in turns:
        if row.turn_id in held:
            kind = "review"
        elif row.outcome in DENY_REASONS:
            kind = "deny"
        elif row.status == "released":
            kind = "allow"
        else:
            kind = "other"  # failed upstream, interrupted: neither allowed nor refused by policy
        counts[kind] += 1
        day = series[row.created_ms // DAY_MS * DAY_MS]
        day["turns"] += 1
        if kind != "other":
            day[kind] += 1
        if row.session_id:
            sessions[row.session_id].append(row)
        if row.status == "released" and row.timings_json:
            upstream = json.loads(row.timings_json).get("upstream_ms")
            if isinstance(upstream, int | float):
                latency.append(round(float(upstream), 3))
        prompt, output = _tokens(row.usage_json)
        tokens[row.model][0] += prompt
        tokens[row.model][1] += output
    total = len(turns)

    until_kept = []
    never_kept = 0
    for rows in sessions.values():
        released = [i for i, r in enumerate(rows) if r.status == "released"]
        if released:
            until_kept.append(float(released[-1] + 1))
        else:
            never_kept += 1

    by_status: dict[str, int] = defaultdict(int)
    decide_ms = []
    for task in tasks:
        by_status[task.status] += 1
        if task.status in CLOSED and task.decided_ms is not None:
            decide_ms.append(float(task.decided_ms - task.created_ms))
    stamped = sum(1 for d in decisions if d.time_ms - d.created_ms < rubber_stamp_ms)

    spend_by_model = {}
    unpriced = {}
    for model, (prompt, output) in sorted(tokens.items()):
        price = prices.get(model)
        if price is None:
            if prompt or output:
                unpriced[model] = {"input_tokens": prompt, "output_tokens": output}
            continue
        usd = (prompt * price["input"] + output * price["output"]) / 1_000_000
        spend_by_model[model] = {
            "input_tokens": prompt, "output_tokens": output, "usd": round(usd, 6),
        }  # fmt: skip
    return {
        "tenant": period.tenant,
        "since_ms": period.since_ms,
        "until_ms": period.until_ms,
        "turns": total,
        "policy": {
            **{k: v for k, v in counts.items()},
            "allow_rate": _rate(counts["allow"], total),
            "deny_rate": _rate(counts["deny"], total),
            "review_rate": _rate(counts["review"], total),
        },
        "reviews": {
            "opened": len(tasks),
            "by_status": dict(sorted(by_status.items())),
            "approve_rate": _rate(by_status["approved"], len(tasks)),
            "expired": by_status["expired"],
            "time_to_decide_ms": _summary(decide_ms),
            "decisions": len(decisions),
            "rubber_stamp_ms": rubber_stamp_ms,
            "rubber_stamps": stamped,
            "rubber_stamp_rate": _rate(stamped, len(decisions)),
        },
        "sessions": {
            "with_kept_output": len(until_kept),
            "without_kept_output": never_kept,
            "turns_until_kept": _summary(until_kept),
        },
        "upstream_latency_ms": _summary(latency),
        "spend": {
            "usd": round(sum(m["usd"] for m in spend_by_model.values()), 6),
            "by_model": spend_by_model,
            "unpriced": unpriced,
        },
        "series": [{"day_ms": day, **values} for day, values in sorted(series.items())],
    }


# -- the data ------------------------------------------------------------------------------------


def _vary(engine: Engine) -> None:
    """Give the synthetic turns every shape a figure reads."""
    t = TURNS.c
    usages = [
        '{"prompt_token_count":7,"candidates_token_count":11}',
        '{"promptTokenCount":3.9,"candidatesTokenCount":"many"}',
        '{"totalTokenCount":5}',
        '{"promptTokenCount":2,"prompt_token_count":9,"candidatesTokenCount":1290}',
    ]
    timings = [
        '{"upstream_ms":912.3456789,"total_ms":950}',
        '{"total_ms":950}',
        '{"upstream_ms":"slow","total_ms":950}',
        '{"upstream_ms":1000.0005,"total_ms":950}',
        '{"upstream_ms":77,"total_ms":80}',
    ]
    with engine.begin() as conn:
        for n, usage in enumerate(usages):
            conn.execute(
                update(TURNS).where(t.first_entry_index % 17 == n).values(usage_json=usage)
            )
        conn.execute(update(TURNS).where(t.first_entry_index % 17 == 9).values(usage_json=None))
        for n, timing in enumerate(timings):
            conn.execute(
                update(TURNS).where(t.first_entry_index % 13 == n).values(timings_json=timing)
            )
        conn.execute(update(TURNS).where(t.first_entry_index % 29 == 1).values(session_id=None))
        conn.execute(update(TURNS).where(t.first_entry_index % 31 == 2).values(session_id=""))
        conn.execute(
            update(TURNS)
            .where(t.first_entry_index % 23 == 4)
            .values(status="interrupted", outcome="CRASHED")
        )
        conn.execute(
            update(TURNS).where(t.first_entry_index % 41 == 5).values(outcome="RATE_LIMITED")
        )


@pytest.fixture()
def varied(db_url: str, tmp_path: Path) -> Engine:
    migrate(db_url)
    engine = make_engine(db_url)
    synthesise_turns(engine, turns=TURN_COUNT, tenants=3)
    synthesise_reviews(engine, turns=TURN_COUNT, tenants=3)
    _vary(engine)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return engine


def test_aggregated_figures_equal_the_row_by_row_definition(varied: Engine) -> None:
    span = TURN_COUNT * 10
    periods = [
        Period("t0", BASE_MS, BASE_MS + span),
        Period("t1", BASE_MS + span // 3, BASE_MS + span // 2),
        Period(None, BASE_MS - DAY_MS, BASE_MS + span + DAY_MS),
        Period("t2", BASE_MS + 7, BASE_MS + 7 + span // 10),
        Period("nobody", BASE_MS, BASE_MS + span),
    ]
    for period in periods:
        for stamp_ms in (1, 10_000, 10**9):
            expected = figures_row_by_row(varied, period, rubber_stamp_ms=stamp_ms, prices=PRICES)
            got = oversight_figures(varied, period, rubber_stamp_ms=stamp_ms, prices=PRICES)
            assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True), period
    everything = figures_row_by_row(varied, periods[2], rubber_stamp_ms=10_000, prices=PRICES)
    # The data exercise what they should: every kind, reviews, sessions, spend and latency.
    assert all(everything["policy"][k] for k in ("allow", "deny", "review", "other"))
    assert everything["reviews"]["decisions"] and everything["reviews"]["expired"]
    assert everything["sessions"]["with_kept_output"] and everything["spend"]["unpriced"]
    assert everything["upstream_latency_ms"]["count"] and len(everything["series"]) >= 1
