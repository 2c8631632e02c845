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

The database computes them (``oversight_figures``: GROUP BY and window queries, three passes over
the period's turns, none returning a row per turn); the first, row-by-row implementation is kept
in ``tests/test_oversight_scale.py`` as the definition the aggregation is held equal to. The cost
stays linear in the period's turns: ``docs/performance.md`` has the figures at 10⁶.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Engine, Float, Numeric, case, cast, func, select
from sqlalchemy.dialects.postgresql import JSONB

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


def _in_period(created: Any, tenant_col: Any, period: Period) -> list[Any]:
    conds = [created >= period.since_ms, created < period.until_ms]
    if period.tenant is not None:
        conds.append(tenant_col == period.tenant)
    return conds


def _json_number(dialect: str, column: Any, key: str) -> Any:
    """The number at ``key`` of the JSON object in text ``column``; NULL when it is absent or
    not a number (a string, a boolean, null). Custody writes these columns itself (orjson)."""
    if dialect == "postgresql":
        item = cast(column, JSONB)[key]
        return case((func.jsonb_typeof(item) == "number", cast(item.astext, Float)), else_=None)
    return case(
        (
            func.json_type(column, f"$.{key}").in_(("integer", "real")),
            func.json_extract(column, f"$.{key}"),
        ),
        else_=None,
    )


def _token_count(dialect: str, column: Any, *names: str) -> Any:
    """The first of ``names`` holding a number, truncated to an integer; else 0."""
    # COALESCE reads each name once, and the next only when it holds no number (a CASE per
    # name would read each twice: SQLite before 3.45 parses the JSON text on every read).
    first = func.coalesce(*(_json_number(dialect, column, name) for name in names))
    truncated = func.trunc(cast(first, Numeric)) if dialect == "postgresql" else first
    return func.coalesce(cast(truncated, BigInteger), 0)


def _nearest_ranks(conn: Any, values: Any, ranks: list[int]) -> dict[int, float]:
    """The ``ranks``-th smallest (1-based) of the column ``v`` of a subquery, by one sort."""
    ordered = select(values.c.v, func.row_number().over(order_by=values.c.v).label("rn")).subquery()
    query = select(ordered.c.rn, ordered.c.v).where(ordered.c.rn.in_(sorted(set(ranks))))
    return {int(rn): float(v) for rn, v in conn.execute(query)}


def _ranked_summary(
    conn: Any, values: Any, count: int, total: float, *, decimals: int | None = None
) -> dict[str, Any]:
    """``_summary`` of the ``count`` values of a subquery's column ``v`` (their sum ``total``,
    of the values as rounded): the nearest-rank values come from the database by one sort.
    Rounding is monotonic, so the value at a rank rounds to the rounded values' value there."""
    if not count:
        return _summary([])
    ranks = {p: max(1, math.ceil(p / 100 * count)) for p in (50, 95)}
    found = _nearest_ranks(conn, values, list(ranks.values()))

    def shown(x: float) -> float:
        return round(x, decimals) if decimals is not None else float(x)

    return {
        "count": count,
        "median": shown(found[ranks[50]]),
        "p95": shown(found[ranks[95]]),
        "mean": round(float(total) / count, 3),
    }


def oversight_figures(
    engine: Engine,
    period: Period,
    *,
    rubber_stamp_ms: int,
    prices: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The figures of the module doc for ``period``, aggregated by the database: three passes
    over the period's turns (one GROUP BY day, kind and model for the counts, tokens and the
    latency's count and sum; one sort for the latency's two ranks; one window per session) and
    three small reads of the review tables. Nothing returns a row per turn.
    ``tests/test_oversight_scale.py`` holds the result equal to the row-by-row definition."""
    t, r, d = TURNS.c, REVIEW_TASKS.c, REVIEW_DECISIONS.c
    dialect = engine.dialect.name
    in_period = _in_period(t.created_ms, t.tenant, period)
    task_period = _in_period(r.created_ms, r.tenant, period)
    held = t.turn_id.in_(select(r.turn_id).where(*task_period))
    kind = case(
        (held, "review"),
        (t.outcome.in_(DENY_REASONS), "deny"),
        (t.status == "released", "allow"),
        else_="other",  # failed upstream, interrupted: neither allowed nor refused by policy
    ).label("kind")
    day = (t.created_ms // DAY_MS * DAY_MS).label("day")
    upstream = _json_number(dialect, t.timings_json, "upstream_ms")
    latency = case((t.status == "released", upstream), else_=None)
    prompt = _token_count(dialect, t.usage_json, "promptTokenCount", "prompt_token_count")
    output = _token_count(dialect, t.usage_json, "candidatesTokenCount", "candidates_token_count")
    position = (
        func.row_number()
        .over(partition_by=t.session_id, order_by=(t.created_ms, t.turn_id))
        .label("pos")
    )
    numbered = (
        select(t.session_id, t.status, position)
        .where(*in_period, t.session_id.is_not(None), t.session_id != "")
        .subquery()
    )
    kept_at = func.max(case((numbered.c.status == "released", numbered.c.pos)))
    with engine.connect() as conn:
        groups = conn.execute(
            select(
                day,
                kind,
                t.model,
                func.count(),
                func.sum(prompt),
                func.sum(output),
                func.count(latency),
                func.sum(func.round(cast(latency, Numeric), 3)),
            )
            .where(*in_period)
            .group_by(day, kind, t.model)
        ).all()
        latency_count = sum(int(g[6]) for g in groups)
        latency_sum = sum(float(g[7]) for g in groups if g[7] is not None)
        upstream_latency = _ranked_summary(
            conn,
            select(upstream.label("v"))
            .where(*in_period, t.status == "released", upstream.is_not(None))
            .subquery(),
            latency_count,
            latency_sum,
            decimals=3,
        )
        kept = [v for (v,) in conn.execute(select(kept_at).group_by(numbered.c.session_id))]
        by_status = {
            status: int(n)
            for status, n in conn.execute(
                select(r.status, func.count()).where(*task_period).group_by(r.status)
            )
        }
        closed = (*task_period, r.status.in_(CLOSED), r.decided_ms.is_not(None))
        decide_count, decide_sum = conn.execute(
            select(func.count(), func.sum(r.decided_ms - r.created_ms)).where(*closed)
        ).one()
        decide = _ranked_summary(
            conn,
            select((r.decided_ms - r.created_ms).label("v")).where(*closed).subquery(),
            int(decide_count),
            float(decide_sum or 0),
        )
        decisions, stamped = conn.execute(
            select(
                func.count(),
                func.coalesce(
                    func.sum(case((d.time_ms - r.created_ms < rubber_stamp_ms, 1), else_=0)), 0
                ),
            )
            .select_from(REVIEW_DECISIONS.join(REVIEW_TASKS, r.task_id == d.task_id))
            .where(*task_period)
        ).one()

    counts = {"allow": 0, "deny": 0, "review": 0, "other": 0}
    series: dict[int, dict[str, int]] = defaultdict(
        lambda: {"turns": 0, "allow": 0, "deny": 0, "review": 0}
    )
    tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for day_ms, what, model, n, prompt_sum, output_sum, _, _ in groups:
        counts[what] += n
        series[int(day_ms)]["turns"] += n
        if what != "other":
            series[int(day_ms)][what] += n
        tokens[model][0] += int(prompt_sum or 0)
        tokens[model][1] += int(output_sum or 0)
    total = sum(counts.values())
    opened = sum(by_status.values())
    until_kept = [float(v) for v in kept if v is not None]

    spend_by_model = {}
    unpriced = {}
    for model, (prompt_tokens, output_tokens) in sorted(tokens.items()):
        price = prices.get(model)
        if price is None:
            if prompt_tokens or output_tokens:
                unpriced[model] = {"input_tokens": prompt_tokens, "output_tokens": output_tokens}
            continue
        usd = (prompt_tokens * price["input"] + output_tokens * price["output"]) / 1_000_000
        spend_by_model[model] = {
            "input_tokens": prompt_tokens, "output_tokens": output_tokens, "usd": round(usd, 6),
        }  # fmt: skip
    return {
        "tenant": period.tenant,
        "since_ms": period.since_ms,
        "until_ms": period.until_ms,
        "turns": total,
        "policy": {
            **counts,
            "allow_rate": _rate(counts["allow"], total),
            "deny_rate": _rate(counts["deny"], total),
            "review_rate": _rate(counts["review"], total),
        },
        "reviews": {
            "opened": opened,
            "by_status": dict(sorted(by_status.items())),
            "approve_rate": _rate(by_status.get("approved", 0), opened),
            "expired": by_status.get("expired", 0),
            "time_to_decide_ms": decide,
            "decisions": int(decisions),
            "rubber_stamp_ms": rubber_stamp_ms,
            "rubber_stamps": int(stamped),
            "rubber_stamp_rate": _rate(int(stamped), int(decisions)),
        },
        "sessions": {
            "with_kept_output": len(until_kept),
            "without_kept_output": len(kept) - len(until_kept),
            "turns_until_kept": _summary(until_kept),
        },
        "upstream_latency_ms": upstream_latency,
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
