"""Oversight figures of one tenant over one period, all derived from recorded rows.

Every figure is computed from the turn index (``turns``: written with each turn's closing ledger
event) and the review tables (``review_tasks``, ``review_decisions``: each change recorded in the
ledger as it happens), so anyone holding the database can re-derive it; the definitions:

- ``turns``: turns created in ``[since, until)``; ``policy``: how many were allowed (released,
  never held), denied (``POLICY_DENIED`` / ``RATE_LIMITED``) or held for review, and their rates.
- ``reviews``: review tasks opened in the period by final status; ``time_to_decide_ms``: from a
  task's opening to its close (median, p95) over closed tasks; ``expired``: tasks whose deadline
  passed undecided; ``rubber_stamp``: decisions taken less than ``rubber_stamp_ms`` after their
  task opened, and their share of all decisions.
- ``sessions``: per session (``x-custody-session``) with a released turn, how many turns it took
  up to and including its last released turn — the output the person kept — (median, p95, mean).
- ``upstream_latency_ms``: the upstream time of released turns (median, p95).
- ``spend``: ``promptTokenCount`` and ``candidatesTokenCount`` of each turn's recorded usage ×
  the configured price per million tokens of its model (``CUSTODY_MODEL_PRICES``); models without
  a price are listed under ``unpriced`` with their tokens.
- ``series``: the same policy counts per UTC day, for charts.

Percentiles are nearest-rank (the smallest value with at least p % of values at or below it).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from governance.compliance.queries import DENY_REASONS, REVIEW_DECISIONS, REVIEW_TASKS
from storage.schema.turns import TURNS

DAY_MS = 86_400_000
CLOSED = ("approved", "rejected", "changes_requested", "expired")


class PriceError(ValueError):
    """``CUSTODY_MODEL_PRICES`` is not the JSON it must be."""


def parse_prices(text: str) -> dict[str, dict[str, float]]:
    """``{"model": {"input": USD per 1M tokens, "output": ...}}``; empty text: no prices."""
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceError(f"CUSTODY_MODEL_PRICES is not JSON: {exc}") from exc
    prices: dict[str, dict[str, float]] = {}
    if not isinstance(doc, dict):
        raise PriceError('CUSTODY_MODEL_PRICES must be {"model": {"input": n, "output": n}}')
    for model, price in doc.items():
        if not isinstance(price, dict) or not all(
            isinstance(price.get(k, 0), int | float) for k in ("input", "output")
        ):
            raise PriceError(f"CUSTODY_MODEL_PRICES[{model!r}] must be {{input, output}} numbers")
        prices[str(model)] = {k: float(price.get(k, 0)) for k in ("input", "output")}
    return prices


@dataclass(frozen=True)
class Period:
    tenant: str | None
    since_ms: int
    until_ms: int


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "median": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": round(sum(values) / len(values), 3) if values else None,
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


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


def oversight_figures(
    engine: Engine,
    period: Period,
    *,
    rubber_stamp_ms: int,
    prices: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The figures of the module doc for ``period``."""
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


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(f"{prefix}.{i}", item, out)
    else:
        out.append((prefix, "" if value is None else value))


def figures_csv(figures: dict[str, Any]) -> str:
    """The figures as CSV: one ``figure,value`` row per leaf (``policy.deny_rate``, ...)."""
    rows: list[tuple[str, Any]] = []
    _flatten("", figures, rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["figure", "value"])
    writer.writerows(rows)
    return buf.getvalue()
