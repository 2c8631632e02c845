"""Ledger throughput and proof cost on SQLite and PostgreSQL, against the raw database in the
same run.

Appends: single-event appends with 1, 4 and 16 writer threads on one ``Ledger``, and with 4 writer
processes each with its own ``Ledger`` (the replica case; they commit through the host's
sequencer, ``storage/ledger/host_appends.py``, and the events per database transaction are
printed). Each figure is a ratio to the raw
single-row commit rate of the same database (bare driver, same durability settings) measured in
the slices right before and right after it: on a shared machine the fsync cost drifts by 10x
within a minute, so a raw figure from another moment would make the ratio meaningless. The raw
rate of 4 concurrent processes is printed too: it is what the database itself does with 4
committers (PostgreSQL merges their WAL flushes; SQLite serialises them). Target (issue 15):
ledger appends with 4 threads and with 4 processes >= 2x the raw single-row commit rate.

Proofs: inclusion-proof time at 10^4, 10^5 and 10^6 entries (stored hashes bulk-built);
``verify_ledger`` time per 10^5 entries; an inclusion proof in <= 1 ms at 10^6 entries.

``python -m bench.ledger_bench [sqlite] [postgres] [--appends-only]``. PostgreSQL:
``CUSTODY_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``); a scratch
database is created and dropped. Skipped with a note when the server is unreachable.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from storage.db import is_sqlite, make_engine, migrate, normalise_url
from storage.ledger.events import LedgerEvent
from storage.ledger.host_appends import HostAppends
from storage.ledger.log import Ledger
from storage.ledger.merkle import MemoryHashReader, leaf_hash
from storage.ledger.note import Ed25519NoteSigner, NoteSigner
from storage.ledger.verify import verify_ledger

ORIGIN = "bench.custody.example/ledger"
PG_ADMIN_URL = os.environ.get("CUSTODY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECONDS = 2.0  # per throughput measurement
RAW_SLICE = 1.0  # seconds of raw commits measured before and after each ledger figure
TARGET_RATIO = 2.0
ROUNDS = 3
PROOF_SIZES = (10_000, 100_000, 1_000_000)
VERIFY_ENTRIES = 100_000


def _event(writer: int, i: int) -> LedgerEvent:
    # The size of a typical policy.decided / output.signed body: a few commitments and ints.
    return LedgerEvent(
        type="output.signed",
        tenant="bench",
        actor=f"editor{writer}@bench",
        session=f"s{writer}",
        turn=f"t{writer}-{i}",
        body={
            "signed_file": "salted-sha256:" + "A" * 43,
            "manifest": "salted-sha256:" + "B" * 43,
            "bytes": 4_200_000,
            "n": i,
        },
    )


# --- databases ------------------------------------------------------------------------------------


@contextmanager
def _database(kind: str, work: Path) -> Iterator[str | None]:
    """A fresh, migrated database URL (None when PostgreSQL is unreachable)."""
    if kind == "sqlite":
        url = f"sqlite:///{work / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
        migrate(url)
        yield url
        return
    import psycopg

    name = f"custody_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"  PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}; skipped")
        yield None
        return
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _raw_commit_rate(url: str, seconds: float = RAW_SLICE) -> float:
    """Single-row transactions per second on the bare driver, with Custody's durability
    settings (SQLite: WAL, synchronous=FULL, BEGIN IMMEDIATE; PostgreSQL: defaults)."""
    return _raw_commits(url, seconds) / seconds


def _raw_commits(url: str, seconds: float, barrier: Any = None) -> int:
    row = b"x" * 300
    if is_sqlite(url):
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id INTEGER PRIMARY KEY, v BLOB)")
        if barrier is not None:
            barrier.wait()
        n, stop = 0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench_raw (v) VALUES (?)", (row,))
            conn.execute("COMMIT")
            n += 1
        conn.close()
        return n
    import psycopg

    with psycopg.connect(normalise_url(url).replace("+psycopg", "")) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, v bytea)")
        conn.commit()
        if barrier is not None:
            barrier.wait()
        n, stop = 0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            conn.execute("INSERT INTO bench_raw (v) VALUES (%s)", (row,))
            conn.commit()
            n += 1
        return n


def _raw_process(url: str, barrier: Any, out: Any) -> None:
    out.put(_raw_commits(url, SECONDS, barrier))


def _raw_processes_rate(url: str, processes: int) -> float:
    """Raw single-row commits/s of ``processes`` processes committing at once."""
    _raw_commits(url, 0.0)  # the table exists before they race to create it
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(processes)
    procs = [ctx.Process(target=_raw_process, args=(url, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join()
    return total / SECONDS


# --- appends --------------------------------------------------------------------------------------


def _threads_rate(url: str, signer: NoteSigner, threads: int) -> tuple[float, float]:
    """Appends/s with ``threads`` writers on one Ledger, and events per transaction."""
    engine = make_engine(url, pool_size=max(4, threads))
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer)
    ledger.append([_event(0, -1)])  # warm-up: connections, cache
    tx0, n0 = ledger.transactions, ledger.appended
    stop = time.perf_counter() + SECONDS
    barrier = threading.Barrier(threads + 1)

    def writer(k: int) -> None:
        barrier.wait()
        i = 0
        while time.perf_counter() < stop:
            ledger.append([_event(k, i)])
            i += 1

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    done, txs = ledger.appended - n0, ledger.transactions - tx0
    ledger.close()
    engine.dispose()
    return done / elapsed, done / max(1, txs)


def _process_writer(url: str, key: str, k: int, barrier: Any, out: Any) -> None:
    engine = make_engine(url)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=Ed25519NoteSigner.from_key_string(key))
    ledger.append([_event(k, -1)])  # warm-up: imports, connections
    store = ledger.store
    tx0 = store.transactions if isinstance(store, HostAppends) else ledger.transactions
    barrier.wait()
    n, stop = 0, time.perf_counter() + SECONDS
    while time.perf_counter() < stop:
        ledger.append([_event(k, n)])
        n += 1
    barrier.wait()  # nobody hands the sequencer on before everyone is done
    txs = (store.transactions if isinstance(store, HostAppends) else ledger.transactions) - tx0
    out.put((n, txs))
    ledger.close()
    engine.dispose()


def _processes_rate(url: str, signer: NoteSigner, processes: int) -> tuple[float, float]:
    """Appends/s with ``processes`` processes, each with its own Ledger and one writer, and the
    events per database transaction; they start together once every one has imported Custody
    and appended once (through the host's sequencer, ``storage/ledger/host_appends.py``)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(processes)
    procs = [
        ctx.Process(target=_process_writer, args=(url, signer.key_string(), k, barrier, out))
        for k in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    total = sum(n for n, _ in results)
    return total / SECONDS, total / max(1, sum(t for _, t in results))


# --- proofs and verification ----------------------------------------------------------------------


def _bulk_build(url: str, size: int) -> None:
    """Store the hashes of a ``size``-leaf tree directly (entries are not needed for proofs)."""
    tree = MemoryHashReader()
    rng = random.Random(7)
    tree.extend([leaf_hash(rng.randbytes(16)) for _ in range(size)])
    if is_sqlite(url):
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO ledger_hashes (idx, hash) VALUES (?, ?)", enumerate(tree.hashes)
        )
        conn.execute("UPDATE ledger_head SET size = ? WHERE id = 1", (size,))
        conn.execute("COMMIT")
        conn.close()
        return
    import psycopg

    with psycopg.connect(normalise_url(url).replace("+psycopg", "")) as conn:
        with conn.cursor() as cur, cur.copy("COPY ledger_hashes (idx, hash) FROM STDIN") as copy:
            for row in enumerate(tree.hashes):
                copy.write_row(row)
        conn.execute("UPDATE ledger_head SET size = %s WHERE id = 1", (size,))


def _proof_ms(url: str, signer: NoteSigner) -> dict[int, float]:
    _bulk_build(url, max(PROOF_SIZES))
    engine = make_engine(url)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer)
    rng = random.Random(11)
    out = {}
    for size in PROOF_SIZES:
        for _ in range(20):  # warm-up
            ledger.prove_inclusion(rng.randrange(size), size)
        times = []
        for _ in range(300):
            index = rng.randrange(size)
            start = time.perf_counter()
            ledger.prove_inclusion(index, size)
            times.append((time.perf_counter() - start) * 1000)
        out[size] = statistics.median(times)
    ledger.close()
    engine.dispose()
    return out


def _verify_seconds(url: str, signer: NoteSigner, entries: int) -> float:
    """Seconds ``verify_ledger`` takes over ``entries`` appended entries."""
    engine = make_engine(url)
    ledger = Ledger.open(engine, origin=ORIGIN, signer=signer, checkpoint_every_entries=10_000)
    for start in range(0, entries, 1000):
        ledger.append([_event(0, i) for i in range(start, min(entries, start + 1000))])
    ledger.issue_checkpoint()
    ledger.close()
    begin = time.perf_counter()
    report = verify_ledger(engine, origin=ORIGIN, verifier=signer.verifier())
    elapsed = time.perf_counter() - begin
    engine.dispose()
    assert report.ok and report.entries == entries, report.summary()
    return elapsed


# --- report ---------------------------------------------------------------------------------------


def _line(label: str, rounds: list[tuple[float, float]], extra: str = "") -> float:
    """Print the median rate and ratio of ``rounds`` (rate, raw beside it); the median ratio."""
    ratios = sorted(rate / raw for rate, raw in rounds)
    rate = statistics.median(r for r, _ in rounds)
    raw = statistics.median(w for _, w in rounds)
    ratio = statistics.median(ratios)
    spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
    print(
        f"  {label:<26} {rate:>7,.0f}/s  raw {raw:>6,.0f}/s  {ratio:5.2f}x raw ({spread})  {extra}"
    )
    return ratio


def _beside_raw(url: str, measure: Callable[[], float]) -> tuple[float, float]:
    """``measure()`` and the raw single-row commit rate around it (mean of before and after)."""
    before = _raw_commit_rate(url)
    rate = measure()
    after = _raw_commit_rate(url)
    return rate, (before + after) / 2


def _verdict(ratio: float) -> str:
    return f"target >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'MISSED'}"


def _rounds(url: str, measure: Callable[[], float]) -> list[tuple[float, float]]:
    return [_beside_raw(url, measure) for _ in range(ROUNDS)]


def _bench(kind: str, work: Path, signer: NoteSigner, *, appends_only: bool = False) -> None:
    print(f"\n{kind}: median of {ROUNDS} rounds (ratio range in brackets)")
    with _database(kind, work) as url:
        if url is None:
            return
        for threads in (1, 4, 16):
            per_tx: list[float] = []

            def threaded(threads: int = threads, per_tx: list[float] = per_tx) -> float:
                rate, events_per_tx = _threads_rate(url, signer, threads)
                per_tx.append(events_per_tx)
                return rate

            rounds = _rounds(url, threaded)
            events = f"{statistics.median(per_tx):4.1f} events/tx"
            if threads == 4:
                ratio = statistics.median(r / w for r, w in rounds)
                events += "  " + _verdict(ratio)
            _line(f"appends, {threads} thread(s)", rounds, events)
        proc_tx: list[float] = []

        def processes(per_tx: list[float] = proc_tx) -> float:
            rate, events_per_tx = _processes_rate(url, signer, 4)
            per_tx.append(events_per_tx)
            return rate

        rounds = _rounds(url, processes)
        ratio = statistics.median(r / w for r, w in rounds)
        events = f"{statistics.median(proc_tx):4.1f} events/tx  {_verdict(ratio)}"
        _line("appends, 4 processes", rounds, events)
        rounds = _rounds(url, lambda: _raw_processes_rate(url, 4))
        _line("raw commits, 4 processes", rounds, "(the database alone, 4 committers)")
    if appends_only:
        return
    with _database(kind, work) as url:
        if url is None:
            return
        build = time.perf_counter()
        proofs = _proof_ms(url, signer)
        built = time.perf_counter() - build
        for size, ms in proofs.items():
            verdict = (
                f"  target <= 1 ms: {'met' if ms <= 1.0 else 'MISSED'}" if size >= 10**6 else ""
            )
            print(f"  inclusion proof at {size:>9,} entries: {ms:6.3f} ms (median){verdict}")
        print(f"  (10^6-leaf stored-hash table bulk-built in {built:.1f} s)")
    with _database(kind, work) as url:
        if url is None:
            return
        secs = _verify_seconds(url, signer, VERIFY_ENTRIES)
        print(f"  verify_ledger: {secs * 100_000 / VERIFY_ENTRIES:.1f} s per 10^5 entries")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("kinds", nargs="*", default=["sqlite", "postgres"])
    parser.add_argument(
        "--appends-only", action="store_true", help="skip the proof and verification figures"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="custody-ledger-bench-"))
    signer = Ed25519NoteSigner.generate(ORIGIN)
    print(
        f"Ledger appends ({SECONDS:.0f} s per figure, single-event appends, group commit), proofs"
        " and verification; each append figure as a ratio to the raw single-row commit rate of"
        f" the same database in the {RAW_SLICE:.0f} s before and after it"
    )
    try:
        for kind in args.kinds:
            _bench(kind, work, signer, appends_only=args.appends_only)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
