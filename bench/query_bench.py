"""Compliance-query latency at 10⁶ recorded turns on SQLite and PostgreSQL (issue 18).

The turns are synthesised straight into a migrated scratch database (``bench/query_data.py``:
bulk INSERTs, statistics refreshed with ANALYZE), then each indexed filter of
``governance.compliance.queries.query_turns`` answers its first page (50 rows, with each row's
ledger indexes and outputs attached, as the API returns it) and a second page by cursor, with a
different value of the filter each time. Reported: p50 and p95 in ms, and the p50 as a ratio to
a primary-key lookup of one turn measured in the same run (the baseline; a shared machine's
figures drift, their ratio less). Target: indexed filters p50 ≤ 50 ms. Then the oversight
figures (``governance.compliance.oversight``, with one turn in 20 held for review) of one tenant
over the whole span (a quarter of the turns), of every tenant (all of them) and of one tenant
over a tenth of the span, ``--oversight-repeat`` times each.

``python -m bench.query_bench [--turns N] [--repeat R] [--oversight-repeat O] [sqlite]
[postgres]``; ``make bench`` runs it with 10⁶ turns (10⁵ under ``--quick``). PostgreSQL:
``CUSTODY_TEST_PG_URL``'s server, a scratch database created and dropped; skipped with a note
when unreachable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text

from bench.query_data import BASE_MS, CAMPAIGNS, MODELS, synthesise_reviews, synthesise_turns
from governance.compliance.oversight import Period, oversight_figures
from governance.compliance.queries import EventFilter, TurnFilter, query_events, query_turns
from storage.db import make_engine, migrate
from storage.schema.turns import TURNS

PG_ADMIN = os.environ.get("CUSTODY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TENANTS = 4
TARGET_MS = 50.0


@contextmanager
def _database(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'query-bench.db'}"
        return
    try:
        import psycopg

        name = f"custody_qbench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # pragma: no cover - depends on the machine
        print(f"postgresql skipped: {exc}")
        yield None
        return
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _timed(fn: Callable[[int], Any], repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _call(fn: Callable[[int, Any], Any], bound: Any) -> Callable[[int], Any]:
    """``fn`` with ``bound`` as its second argument (a loop's value, bound now, not later)."""
    return lambda i: fn(i, bound)


def _p(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def _filters(turns: int) -> dict[str, Callable[[int], TurnFilter]]:
    span = turns * 10
    return {
        "tenant": lambda i: TurnFilter(tenant=f"t{i % TENANTS}"),
        "actor": lambda i: TurnFilter(
            tenant=f"t{i % TENANTS}", actor=f"actor-{i % 50}@t{i % TENANTS}"
        ),
        "session": lambda i: TurnFilter(tenant=f"t{i % TENANTS}", session=f"s-{(i * 37) % 5000}"),
        "model": lambda i: TurnFilter(tenant=f"t{i % TENANTS}", model=MODELS[i % 2]),
        "policy=deny": lambda i: TurnFilter(tenant=f"t{i % TENANTS}", policy="deny"),
        "label": lambda i: TurnFilter(
            tenant=f"t{i % TENANTS}", label=f"campaign=c-{(i * 7) % CAMPAIGNS}"
        ),
        "label @version": lambda i: TurnFilter(tenant=f"t{i % TENANTS}", label="@version=final"),
        "actor+time range": lambda i: TurnFilter(
            tenant=f"t{i % TENANTS}",
            actor=f"actor-{i % 50}@t{i % TENANTS}",
            since_ms=BASE_MS + span // 4,
            until_ms=BASE_MS + span // 2,
        ),
        "time range": lambda i: TurnFilter(
            tenant=f"t{i % TENANTS}",
            since_ms=BASE_MS + span // 3,
            until_ms=BASE_MS + span // 3 + span // 10,
        ),
    }


def _measure(
    kind: str, url: str, turns: int, repeat: int, oversight_repeat: int
) -> list[tuple[str, float, float, float]]:
    migrate(url)
    engine: Engine = make_engine(url, immediate=False)
    started = time.perf_counter()
    synthesise_turns(engine, turns=turns, tenants=TENANTS)
    synthesise_reviews(engine, turns=turns, tenants=TENANTS)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    print(
        f"{kind}: {turns:,} turns synthesised in {time.perf_counter() - started:.0f} s", flush=True
    )
    ids = [f"{(i * 7919) % turns:032x}" for i in range(repeat)]

    def by_key(i: int) -> None:
        with engine.connect() as conn:
            conn.execute(select(TURNS).where(TURNS.c.turn_id == ids[i])).one()

    by_key(0)  # warm the pool
    baseline = statistics.median(_timed(by_key, repeat))
    rows: list[tuple[str, float, float, float]] = [
        ("primary-key lookup (baseline)", baseline, baseline, 1.0)
    ]
    for name, make in _filters(turns).items():
        times = _timed(_call(lambda i, make: query_turns(engine, make(i), limit=50), make), repeat)
        rows.append((f"turns: {name}", _p(times, 50), _p(times, 95), _p(times, 50) / baseline))
        cursors = [query_turns(engine, make(i), limit=50).next_cursor for i in range(repeat)]
        times = _timed(
            _call(
                lambda i, made: query_turns(engine, made[0](i), cursor=made[1][i], limit=50),
                (make, cursors),
            ),
            repeat,
        )
        rows.append(
            (f"turns: {name}, page 2", _p(times, 50), _p(times, 95), _p(times, 50) / baseline)
        )
    for name, make_event in {
        "tenant": lambda i: EventFilter(tenant=f"t{i % TENANTS}"),
        "tenant+type": lambda i: EventFilter(tenant=f"t{i % TENANTS}", type="policy.decided"),
        "turn": lambda i: EventFilter(tenant=f"t{int(ids[i], 16) % TENANTS}", turn=ids[i]),
        "label": lambda i: EventFilter(
            tenant=f"t{i % TENANTS}", label=f"campaign=c-{(i * 7) % CAMPAIGNS}"
        ),
        "stage=receive (2 types)": lambda i: EventFilter(tenant=f"t{i % TENANTS}", stage="receive"),
        "stage=release (2 types)": lambda i: EventFilter(tenant=f"t{i % TENANTS}", stage="release"),
        "stage=review (10 types)": lambda i: EventFilter(tenant=f"t{i % TENANTS}", stage="review"),
    }.items():
        times = _timed(
            _call(lambda i, make: query_events(engine, make(i), limit=50), make_event), repeat
        )
        rows.append((f"events: {name}", _p(times, 50), _p(times, 95), _p(times, 50) / baseline))
    span = turns * 10
    for name, make_period in {
        f"oversight: 1 tenant, whole span ({turns // TENANTS:,} turns)": lambda i: Period(
            f"t{i % TENANTS}", BASE_MS, BASE_MS + span
        ),
        f"oversight: every tenant ({turns:,} turns)": lambda i: Period(
            None, BASE_MS, BASE_MS + span
        ),
        f"oversight: 1 tenant, a tenth ({turns // TENANTS // 10:,} turns)": lambda i: Period(
            f"t{i % TENANTS}", BASE_MS + span // 3, BASE_MS + span // 3 + span // 10
        ),
    }.items():
        times = _timed(
            _call(
                lambda i, make: oversight_figures(
                    engine, make(i), rubber_stamp_ms=10_000, prices={}
                ),
                make_period,
            ),
            oversight_repeat,
        )
        rows.append((name, _p(times, 50), _p(times, 95), _p(times, 50) / baseline))
    engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query_bench")
    quick = os.environ.get("CUSTODY_BENCH_QUICK") == "1"
    parser.add_argument("--turns", type=int, default=100_000 if quick else 1_000_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--oversight-repeat", type=int, default=3)
    parser.add_argument("kinds", nargs="*", default=["sqlite", "postgres"])
    args = parser.parse_args(argv or [])
    for kind in args.kinds:
        with _database(kind) as url:
            if url is None:
                continue
            rows = _measure(kind, url, args.turns, args.repeat, args.oversight_repeat)
        print(f"\n{kind}, {args.turns:,} turns, {args.repeat} queries each (ms)")
        print(f"{'query':56} {'p50':>9} {'p95':>9} {'p50/baseline':>13}")
        for name, p50, p95, ratio in rows:
            targeted = not name.startswith(("primary", "oversight"))
            flag = "  ABOVE TARGET" if targeted and p50 > TARGET_MS else ""
            print(f"{name:56} {p50:9.2f} {p95:9.2f} {ratio:13.1f}{flag}", flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
