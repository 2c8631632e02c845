"""Gateway memory over 1,000 turns with 2 MB inputs, and where that memory goes.

The real google-genai SDK sends 1,000 edit turns, each with a 2.28 MB photo-like 1024x1024 PNG,
from 16 client threads through ``custody serve`` (its own process) to ``custody emulator`` (another
process): the real route, policy, signing and durable record. The gateway's VmRSS is read from
``/proc/<pid>/status`` before the first turn, after 100 and at the end, with its high-water mark,
``smaps_rollup``'s anonymous share, and its CPU seconds per turn. Goal: the end within 10 % of the
after-100 figure (issue 14) and at most 300 MiB (issue 15).

Each configuration runs in a fresh gateway, so one's memory does not hide another's: as shipped
(``custody serve`` caps glibc malloc at 2 arenas, keeps glibc's dynamic mmap threshold, trims the
arenas every second and freezes its start-up objects out of the cycle collector's view) and as
before (a fixed 1 MiB mmap threshold, no trim: every 2 MB buffer a fresh mapping); with ``--all``
also glibc's malloc defaults, each malloc setting alone and 8 executor threads. ``--tracemalloc``
adds a bench-only harness process that starts ``tracemalloc`` and then runs the same ``custody
serve`` in-process, and on SIGUSR2 writes what Python itself holds — the product has no such
switch.

``python -m bench.gateway_memory_bench [--quick] [--all | --config NAME ...] [--tracemalloc]``
(``--tracemalloc`` alone runs only the harness); ``--quick`` (or ``CUSTODY_BENCH_QUICK=1``) sends
200 turns.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from google.genai import errors

from bench.gateway_bench import (
    TARGET_RSS_MIB,
    Stack,
    memory_breakdown,
    photo_like_png,
    quick,
    running_stack,
    sample_process,
    unary_call,
)

TURNS = 1_000
QUICK_TURNS = 200
FIRST_READING = 100
CLIENTS = 16

CONFIGS: dict[str, dict[str, str]] = {
    "shipped": {},  # 2 arenas, a fixed 1 MiB mmap threshold, no trim
    "dynamic mmap threshold, trim every second": {
        "CUSTODY_MALLOC_MMAP_THRESHOLD": "0",
        "CUSTODY_MALLOC_TRIM_INTERVAL_S": "1",
    },
    "before: glibc's malloc defaults": {
        "CUSTODY_MALLOC_ARENA_MAX": "0",
        "CUSTODY_MALLOC_TRIM_INTERVAL_S": "0",
    },
    "2 arenas only (no trim)": {"CUSTODY_MALLOC_TRIM_INTERVAL_S": "0"},
    "trim only (glibc's arenas)": {"CUSTODY_MALLOC_ARENA_MAX": "0"},
    "shipped, 8 executor threads": {"CUSTODY_EXECUTOR_THREADS": "8"},
    "shipped without huge pages": {"CUSTODY_MALLOC_HUGE_PAGES": "false"},
}
DEFAULT_CONFIGS = ("shipped", "dynamic mmap threshold, trim every second")


def drive(stack: Stack, turns: int, image: bytes) -> dict[str, Any]:
    """Send ``turns`` edits through the gateway from ``CLIENTS`` threads; read its memory."""
    start = sample_process(stack.gateway_pid)

    failures: Counter[str] = Counter()

    def one(turn: int) -> None:
        try:
            unary_call(stack.via(turn), image)
        except errors.APIError as exc:  # counted and shown: memory is still measured
            failures[f"{exc.code} {exc.message or ''}"[:90]] += 1
        except Exception as exc:  # a connection the server closed as the client reused it
            failures[f"{type(exc).__name__}: {exc}"[:90]] += 1

    began = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(FIRST_READING)))
        first = sample_process(stack.gateway_pid)
        list(pool.map(one, range(FIRST_READING, turns)))
    seconds = time.perf_counter() - began
    end = sample_process(stack.gateway_pid)
    rollup = memory_breakdown(stack.gateway_pid)
    return {
        "start": start.rss_mib,
        "first": first.rss_mib,
        "end": end.rss_mib,
        "hwm": end.hwm_mib,
        "anonymous": rollup.get("Anonymous", 0.0),
        "cpu_ms_per_turn": (end.cpu_s - start.cpu_s) / turns * 1000,
        "turns_per_s": turns / seconds,
        "failures": dict(failures),
    }


def run_config(name: str, turns: int, image: bytes) -> dict[str, Any]:
    with running_stack(gateway_env=CONFIGS[name]) as stack:
        return drive(stack, turns, image)


def run_tracemalloc(turns: int, image: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same load against the in-process harness; what tracemalloc saw at the end."""
    out = Path(tempfile.mkdtemp(prefix="custody-tracemalloc-")) / "snapshot.json"
    command = [sys.executable, "-m", "bench.gateway_memory_bench", "--harness"]
    env = {"CUSTODY_BENCH_TRACEMALLOC_OUT": str(out)}
    with running_stack(gateway_env=env, gateway_command=command) as stack:
        row = drive(stack, turns, image)
        os.kill(stack.gateway_pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    snapshot: dict[str, Any] = json.loads(out.read_text())
    return row, snapshot


def harness() -> int:
    """Bench-only: ``custody serve`` in this process under tracemalloc; SIGUSR2 writes a summary."""
    tracemalloc.start(1)
    out = Path(os.environ["CUSTODY_BENCH_TRACEMALLOC_OUT"])

    def write_snapshot(_signum: int, _frame: object) -> None:
        current, peak = tracemalloc.get_traced_memory()
        stats = tracemalloc.take_snapshot().statistics("lineno")[:12]
        # Who holds the large buffers still alive: containers that refer to a bytes over 1 MB.
        holders: Counter[str] = Counter()
        for obj in gc.get_objects():
            for ref in gc.get_referents(obj):
                if isinstance(ref, bytes | bytearray) and len(ref) > 1_000_000:
                    owners = [type(o).__qualname__ for o in gc.get_referrers(obj)][:4]
                    holders[f"{type(obj).__qualname__} <- {owners}"] += 1
        # What only the cycle collector would free: kept aside (DEBUG_SAVEALL) to name its types.
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage = Counter(type(o).__qualname__ for o in gc.garbage)
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
        after_gc, _ = tracemalloc.get_traced_memory()
        summary = {
            "current_mib": current / 2**20,
            "peak_mib": peak / 2**20,
            "after_gc_mib": after_gc / 2**20,
            "cycle_garbage": [f"{n:>6} {name}" for name, n in garbage.most_common(25)],
            "holders": [f"{n:>6} {name}" for name, n in holders.most_common(15)],
            "top": [f"{s.size / 2**20:8.1f} MiB {s.count:>7} blocks  {s.traceback}" for s in stats],
        }
        partial = out.with_suffix(".part")
        partial.write_text(json.dumps(summary))
        partial.rename(out)

    signal.signal(signal.SIGUSR2, write_snapshot)
    from governance.cli import main as custody

    return custody(["serve", "--log-level", "warning"])


def main() -> None:
    args = sys.argv[1:]
    turns = QUICK_TURNS if quick() else TURNS
    names = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    if not names and "--tracemalloc" not in args:
        names = list(CONFIGS) if "--all" in args else list(DEFAULT_CONFIGS)
    image = photo_like_png()
    print(
        f"gateway memory: {turns} turns from {CLIENTS} SDK clients, each a"
        f" {len(image) / 1e6:.2f} MB PNG edit through custody serve to the emulator (own"
        " processes); gateway VmRSS in MiB, fresh gateway per configuration"
    )
    for name in names:
        r = run_config(name, turns, image)
        growth = (r["end"] - r["first"]) / r["first"] * 100
        flat = "flat" if growth <= 10 else "GROWS"
        fits = "met" if r["end"] <= TARGET_RSS_MIB else "MISSED"
        print(
            f"  {name:34} start {r['start']:4.0f}  after {FIRST_READING} {r['first']:4.0f}"
            f"  end {r['end']:4.0f}  HWM {r['hwm']:4.0f}  anon {r['anonymous']:4.0f}"
            f"  end vs after {FIRST_READING} {growth:+5.1f} % ({flat}), ≤ {TARGET_RSS_MIB:g} MiB"
            f" {fits}  CPU {r['cpu_ms_per_turn']:.0f} ms/turn  {r['turns_per_s']:.1f} turns/s",
            flush=True,
        )
        for failure, count in r["failures"].items():
            print(f"      {count} turns failed: {failure}")
    if "--tracemalloc" in args:
        r, snap = run_tracemalloc(turns, image)
        print(
            f"  tracemalloc harness (in-process serve): RSS end {r['end']:.0f} MiB, HWM"
            f" {r['hwm']:.0f}; Python-traced now {snap['current_mib']:.1f} MiB, peak"
            f" {snap['peak_mib']:.1f} MiB; largest holders:"
        )
        for line in snap["top"]:
            print(f"      {line}")
        print(
            f"    after gc.collect(): Python-traced {snap['after_gc_mib']:.1f} MiB; what only the"
            " cycle collector freed, by type:"
        )
        for line in snap["cycle_garbage"]:
            print(f"      {line}")
        print("    what referred to buffers over 1 MB before the collection (holder <- holders):")
        for line in snap["holders"]:
            print(f"      {line}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--harness"]:
        sys.exit(harness())
    main()
