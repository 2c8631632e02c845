"""Two replicas under load: 64 google-genai clients × 20 edit turns (1024² PNG) through two
``custody serve`` processes on one database, against one ``custody emulator``, at 0 s and 5 s
upstream latency — with the same clients direct to the same emulator as the baseline, in the
same run.

Checked, not assumed: zero client errors, every turn recorded (``turn.released`` count in the
shared ledger), ``custody ledger verify`` passes, and each replica's memory (VmRSS / VmHWM from
``/proc``) sampled throughout. Reported: throughput (turns/s) and per-turn latency p50/p99 of
both paths; the added latency is via − direct of the same run (the machine is shared, so only
differences and ratios compare across runs).

``python -m bench.replicas_bench [--clients 64] [--turns 20] [--latency-ms 0,5000]
[--database-url URL] [--log-dir DIR]`` (``make bench`` runs it with the others); the database is
a fresh PostgreSQL database on the local server when it answers, else SQLite in a temporary
directory; ``--log-dir`` keeps each replica's log (its warnings and tracebacks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from google import genai
from google.genai import types
from sqlalchemy import text

from bench.gateway_bench import CUSTODY, _wait, photo_like_png, sample_process
from governance.upstream.embedded import free_port
from storage.db import make_engine

MODEL = "gemini-2.5-flash-image"
PG_ADMIN = os.environ.get("CUSTODY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ACTORS_PER_TENANT = 8  # tenants' own budgets (default policy: 1,200 turns a minute) stay clear


@contextlib.contextmanager
def fresh_database(explicit: str, work: Path) -> Iterator[str]:
    """``explicit``, else a new PostgreSQL database (dropped after), else SQLite in ``work``."""
    if explicit:
        yield explicit
        return
    try:
        import psycopg

        name = f"custody_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception:
        yield f"sqlite:///{work / 'custody.db'}"
        return
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Replicas:
    """An emulator and two gateways on one database, blob store and log key."""

    emulator_url: str
    urls: list[str]
    procs: list[subprocess.Popen[bytes]]
    env: dict[str, str]
    peak_rss_mib: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def sample(self) -> list[float]:
        rss = [sample_process(p.pid).rss_mib for p in self.procs[1:]]
        self.peak_rss_mib = [max(a, b) for a, b in zip(self.peak_rss_mib, rss, strict=True)]
        return rss

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CUSTODY, *args], env=self.env, capture_output=True, text=True, timeout=1800
        )


@contextlib.contextmanager
def two_replicas(
    database_url: str, work: Path, latency_ms: int, log_dir: Path | None = None
) -> Iterator[Replicas]:
    emu_port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    shared = {
        "CUSTODY_DATABASE_URL": database_url,
        "CUSTODY_UPSTREAM_BASE_URL": f"http://127.0.0.1:{emu_port}",
        "CUSTODY_EMULATOR": "on",
        "CUSTODY_BLOB_STORE": "database"
        if database_url.startswith("postgresql")
        else f"file:{work / 'blobs'}",
        "CUSTODY_LOG_KEY_FILE": str(work / "ledger-note.key"),
    }
    envs = [
        {**base, **shared, "CUSTODY_DATA_DIR": str(work / f"replica-{i}"), "CUSTODY_PORT": str(p)}
        for i, p in enumerate((free_port(), free_port()))
    ]
    logs: list[IO[bytes]] = []

    def log_file(name: str) -> IO[bytes] | int:
        if log_dir is None:
            return subprocess.DEVNULL
        log_dir.mkdir(parents=True, exist_ok=True)
        logs.append(open(log_dir / f"{name}-latency-{latency_ms}.log", "wb"))  # noqa: SIM115
        return logs[-1]

    emulator = subprocess.Popen(
        [*CUSTODY, "emulator", "--port", str(emu_port), "--latency-ms", str(latency_ms)],
        env=envs[0],
        stdout=log_file("emulator"),
        stderr=subprocess.STDOUT,
    )
    procs = [emulator]
    try:
        _wait(f"http://127.0.0.1:{emu_port}/v1beta/models", emulator)
        for i, env in enumerate(envs):  # one after the other: the first creates the installation
            out = log_file(f"replica-{i}")
            proc = subprocess.Popen(
                [*CUSTODY, "serve", "--log-level", "warning"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            _wait(f"http://127.0.0.1:{env['CUSTODY_PORT']}/healthz", proc, timeout_s=180)
        yield Replicas(
            f"http://127.0.0.1:{emu_port}",
            [f"http://127.0.0.1:{e['CUSTODY_PORT']}" for e in envs],
            procs,
            envs[0],
        )
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def _keys(replicas: Replicas, clients: int) -> list[str]:
    def create(actor: int) -> str:
        made = replicas.cli(
            "keys",
            "create",
            "--role",
            "editor",
            "--tenant",
            f"bench-{actor // ACTORS_PER_TENANT}",
            "--actor",
            f"bench-editor-{actor}",
        )
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        return made.stdout.strip().splitlines()[-1]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(create, range(clients)))


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0


def run_phase(name: str, clients: list[genai.Client], turns: int, photo: bytes) -> Phase:
    """Every client edits ``turns`` times in a row (its own thread): a chat of edits, each turn
    sending the 1024² photo and an instruction."""
    phase = Phase(name)
    lock = threading.Lock()

    def edit(i: int) -> None:
        for t in range(turns):
            began = time.perf_counter()
            try:
                contents: list[types.PartUnionDict] = [
                    types.Part.from_bytes(data=photo, mime_type="image/png"),
                    f"turn {t}: make the light a little warmer",
                ]
                answer = clients[i].models.generate_content(model=MODEL, contents=contents)
                content = answer.candidates[0].content if answer.candidates else None
                parts = content.parts if content is not None else []
                if not any(p.inline_data for p in parts or []):
                    raise RuntimeError("no image in the answer")
                with lock:
                    phase.latencies_ms.append((time.perf_counter() - began) * 1000)
            except Exception as exc:
                with lock:
                    phase.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    began = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(edit, range(len(clients))))
    phase.wall_s = time.perf_counter() - began
    return phase


def run(
    database_url: str, *, clients: int, turns: int, latency_ms: int, log_dir: Path | None = None
) -> dict[str, object]:
    photo = photo_like_png(1024)
    with tempfile.TemporaryDirectory(prefix="custody-replicas-") as tmp:
        work = Path(tmp)
        with (
            fresh_database(database_url, work) as url,
            two_replicas(url, work, latency_ms, log_dir) as r,
        ):
            keys = _keys(r, clients)

            def client(base_url: str, key: str) -> genai.Client:
                options = types.HttpOptions(base_url=base_url, timeout=600_000)
                return genai.Client(api_key=key, http_options=options)

            direct = [client(r.emulator_url, "bench") for _ in range(clients)]
            vias = [client(r.urls[i % 2], keys[i]) for i in range(clients)]
            start_rss = r.sample()
            stop = threading.Event()

            def sampler() -> None:
                while not stop.wait(0.5):
                    with contextlib.suppress(Exception):
                        r.sample()

            watcher = threading.Thread(target=sampler, daemon=True)
            baseline = run_phase("direct", direct, turns, photo)
            watcher.start()
            via = run_phase("via two replicas", vias, turns, photo)
            stop.set()
            end_rss = r.sample()
            engine = make_engine(url, immediate=False)
            try:
                with engine.connect() as conn:
                    released = conn.execute(
                        text("SELECT count(*) FROM ledger_entries WHERE type = 'turn.released'")
                    ).scalar_one()
            finally:
                engine.dispose()
            verified = r.cli("ledger", "verify", "--json")
            report = json.loads(verified.stdout) if verified.stdout.strip() else {}
            return {
                "database": url.split(":", 1)[0],
                "latency_ms": latency_ms,
                "clients": clients,
                "turns_each": turns,
                "errors": len(via.errors) + len(baseline.errors),
                "errors_direct": len(baseline.errors),
                "error_kinds": dict(Counter(e[:120] for e in via.errors + baseline.errors)),
                "turns_recorded": int(released),
                "verify_ok": verified.returncode == 0 and bool(report.get("ok")),
                "entries": report.get("entries"),
                "direct": _figures(baseline),
                "via": _figures(via),
                "added_p50_ms": round(via.pct(0.5) - baseline.pct(0.5), 1),
                "added_p99_ms": round(via.pct(0.99) - baseline.pct(0.99), 1),
                "throughput_ratio": round(via.throughput / baseline.throughput, 3)
                if baseline.throughput
                else None,
                "rss_mib_start": [round(x) for x in start_rss],
                "rss_mib_end": [round(x) for x in end_rss],
                "rss_mib_peak": [round(x) for x in r.peak_rss_mib],
            }


def _figures(phase: Phase) -> dict[str, float]:
    return {
        "turns": len(phase.latencies_ms),
        "wall_s": round(phase.wall_s, 1),
        "turns_per_s": round(phase.throughput, 2),
        "p50_ms": round(phase.pct(0.5), 1),
        "p99_ms": round(phase.pct(0.99), 1),
        "mean_ms": round(statistics.fmean(phase.latencies_ms), 1) if phase.latencies_ms else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--latency-ms", default="0,5000")
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep each replica's log (warnings, tracebacks)"
    )
    args = parser.parse_args(argv or [])  # ``python -m bench`` calls main() with none
    if os.environ.get("CUSTODY_BENCH_QUICK", "") not in ("", "0"):
        args.clients, args.turns = 8, 3
    bad = 0
    for latency in (int(x) for x in args.latency_ms.split(",")):
        result = run(
            args.database_url,
            clients=args.clients,
            turns=args.turns,
            latency_ms=latency,
            log_dir=args.log_dir,
        )
        expected = args.clients * args.turns
        ok = result["errors"] == 0 and result["turns_recorded"] == expected and result["verify_ok"]
        bad += not ok
        print(json.dumps(result), flush=True)
        print(
            f"latency {latency} ms: {result['turns_recorded']}/{expected} turns recorded,"
            f" {result['errors']} errors, verify {'OK' if result['verify_ok'] else 'FAILED'};"
            f" added p50 {result['added_p50_ms']} ms, p99 {result['added_p99_ms']} ms;"
            f" throughput {result['via']['turns_per_s']} vs {result['direct']['turns_per_s']}"  # type: ignore[index]
            f" turns/s direct; replica RSS peak {result['rss_mib_peak']} MiB",
            flush=True,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
