"""Crash soak: ``kill -9`` a real ``custody serve`` under a 16-client load, restart, check, repeat.

Contract checked after every round (``check_round``):

- ``custody ledger verify`` passes: no leaf refers to content that is not durable and openable;
- no turn is left open: every ``turn.received`` has a closing event, the turns the dead process
  left are ``turn.interrupted`` events and ``turns`` rows with status ``interrupted``;
- every response a client received (HTTP 200 with ``x-custody-turn``) has its full record:
  ``turn.released`` and one ``output.signed`` per image, whose ``signed_sha256`` is the SHA-256
  of the bytes the client got.

``python -m bench.soak [--rounds 5] [--database-url URL]`` (``make soak``) prints the figures of
each round; ``tests/test_crash_clean.py`` runs two short rounds on each database.

``--replicas 2`` runs the same rounds against two ``custody serve`` processes on one database
(one blob store, one log key) under a 32-client load split between them: each round ``kill -9``
lands on one of the two (alternately) while the other keeps serving; the killed one restarts
(recording the turns it left as ``turn.interrupted``) and the same checks run over every response
either replica acknowledged.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from governance.recovery import find_open_turns
from governance.upstream.embedded import free_port
from storage.db import make_engine

REPO = Path(__file__).resolve().parent.parent
MODEL = "gemini-2.5-flash-image"
PHOTO = REPO / "tests" / "fixtures" / "photos" / "sample1.png"


@dataclass
class RoundReport:
    """What one round did and found."""

    round: int
    load_s: float
    acknowledged: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)  # answer (status) -> count
    interrupted: int = 0
    entries: int = 0
    verify_ok: bool = False
    restart_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"round {self.round}: killed {self.load_s:.1f} s after the first response;"
            f" {self.acknowledged} acknowledged, {self.interrupted} interrupted recorded,"
            + (
                " other answers "
                + ", ".join(f"{n} × {why}" for why, n in sorted(self.client_errors.items()))
                + ","
                if self.client_errors
                else ""
            )
            + f" {self.entries} entries, verify "
            f"{'OK' if self.verify_ok else 'FAILED'}, restart {self.restart_s:.1f} s"
            + (f"; PROBLEMS: {self.problems}" if self.problems else "")
        )


class Gateway:
    """``custody serve`` as a subprocess on one database and data directory."""

    def __init__(
        self, database_url: str, data_dir: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
        self.env.update(
            PYTHONPATH=str(REPO),
            CUSTODY_DATA_DIR=str(data_dir),
            CUSTODY_DATABASE_URL=database_url,
            CUSTODY_EMULATOR_LATENCY_MS="150",  # turns spend time upstream, as real ones do
            **(extra_env or {}),
        )
        self.database_url = database_url
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "governance.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=600,
        )

    def key(self, actor: str = "editor@acme") -> str:
        made = self.cli("keys", "create", "--role", "editor", "--tenant", "acme", "--actor", actor)
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        return made.stdout.strip().splitlines()[-1]

    def keys(self, count: int) -> list[str]:
        """One editor key per client, as a team of editors has: the default policy's per-actor
        rate limit (120 turns a minute) would otherwise answer most of one shared key's load with
        429s, and the soak would test refusals instead of turns. The first key makes the
        installation; the rest are made four at a time."""
        first = self.key("soak-editor-0@acme")
        with ThreadPoolExecutor(4) as pool:
            rest = pool.map(self.key, [f"soak-editor-{n}@acme" for n in range(1, count)])
            return [first, *rest]

    def start(self) -> float:
        """Start serving; returns the seconds until healthy (start-up recovery included)."""
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "governance.cli", "serve", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd=REPO,
        )
        while time.monotonic() - began < 180:
            if self.proc.poll() is not None:
                raise RuntimeError("custody serve exited during start-up")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("custody serve did not become healthy")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Acknowledged:
    turn_id: str
    image_sha256: list[str]


def _client(base_url: str, key: str, body: bytes, stop: threading.Event, out: list[Any]) -> None:
    """Edit until ``stop``; ``out`` gets an ``Acknowledged`` per response and a reason per
    other answer."""
    with httpx.Client(base_url=base_url, timeout=60) as http:
        while not stop.is_set():
            try:
                resp = http.post(
                    f"/v1beta/models/{MODEL}:generateContent",
                    content=body,
                    headers={"x-goog-api-key": key, "content-type": "application/json"},
                )
            except httpx.HTTPError:
                out.append("connection lost")
                return  # the gateway is gone
            turn = resp.headers.get("x-custody-turn")
            if resp.status_code != 200 or not turn:
                out.append(f"HTTP {resp.status_code}")
                if resp.status_code in (429, 503):  # told to wait: a real client would
                    stop.wait(min(float(resp.headers.get("retry-after") or 1), 5.0))
                continue
            parts = resp.json()["candidates"][0]["content"]["parts"]
            images = [
                hashlib.sha256(base64.b64decode(p["inlineData"]["data"])).hexdigest()
                for p in parts
                if "inlineData" in p
            ]
            out.append(Acknowledged(turn, images))


def load_and_kill(
    gateway: Gateway,
    keys: list[str],
    *,
    clients: int,
    load_s: float,
    serving: list[Gateway] | None = None,
) -> tuple[list[Acknowledged], dict[str, int]]:
    """Run ``clients`` threads (client ``i`` with ``keys[i]``) against the gateways ``serving``
    (default: ``gateway`` alone, clients split evenly); ``kill -9`` ``gateway`` ``load_s``
    seconds after the first acknowledged response. Returns the acknowledged responses and a
    count of every other answer by reason."""
    targets = serving or [gateway]
    photo = base64.b64encode(PHOTO.read_bytes()).decode()
    body = json.dumps(
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"inlineData": {"mimeType": "image/png", "data": photo}},
                        {"text": "warmer light"},
                    ],
                }
            ]
        }
    ).encode()
    stop = threading.Event()
    results: list[list[Any]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(
            target=_client,
            args=(targets[i % len(targets)].base_url, keys[i], body, stop, results[i]),
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    # The kill lands ``load_s`` after the first response, not after the start: on a loaded machine
    # the first turns can take seconds, and a kill before any would test nothing.
    first_deadline = time.monotonic() + 120
    while time.monotonic() < first_deadline and not any(
        isinstance(r, Acknowledged) for rs in results for r in list(rs)
    ):
        time.sleep(0.05)
    time.sleep(load_s)
    gateway.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=120)
    flat = [r for rs in results for r in rs]
    acked = [r for r in flat if isinstance(r, Acknowledged)]
    return acked, dict(Counter(r for r in flat if isinstance(r, str)))


def check_round(gateway: Gateway, acked: list[Acknowledged], report: RoundReport) -> None:
    """After a restart: verify, no open turn, interrupted turns indexed, acknowledged complete."""
    verified = gateway.cli("ledger", "verify", "--json")
    result = json.loads(verified.stdout) if verified.stdout.strip().startswith("{") else {}
    report.verify_ok = verified.returncode == 0 and bool(result.get("ok"))
    report.entries = int(result.get("entries", 0))
    if not report.verify_ok:
        report.problems.append(f"verify: {result.get('faults', verified.stderr)[:5]}")
    engine = make_engine(gateway.database_url, immediate=False)
    try:
        still_open = find_open_turns(engine)
        if still_open:
            report.problems.append(f"{len(still_open)} turns left open")
        with engine.connect() as conn:
            events = {
                str(t)
                for (t,) in conn.execute(
                    text("SELECT turn_id FROM ledger_entries WHERE type = 'turn.interrupted'")
                )
            }
            rows = {
                str(t)
                for (t,) in conn.execute(
                    text("SELECT turn_id FROM turns WHERE status = 'interrupted'")
                )
            }
            if events != rows:
                report.problems.append("turn.interrupted events and turns rows disagree")
            report.interrupted = len(events)
            for ack in acked:
                types_ = [
                    (str(ty), bytes(leaf))
                    for ty, leaf in conn.execute(
                        text(
                            "SELECT type, leaf FROM ledger_entries WHERE turn_id = :t ORDER BY idx"
                        ),
                        {"t": ack.turn_id},
                    )
                ]
                signed = sorted(
                    json.loads(leaf)["body"]["signed_sha256"]
                    for ty, leaf in types_
                    if ty == "output.signed"
                )
                if "turn.released" not in [ty for ty, _ in types_]:
                    report.problems.append(f"acknowledged turn {ack.turn_id} has no turn.released")
                elif signed != sorted(ack.image_sha256):
                    report.problems.append(
                        f"acknowledged turn {ack.turn_id}: output.signed differ from the images"
                    )
    finally:
        engine.dispose()


def soak(
    database_url: str,
    data_dir: Path,
    *,
    rounds: int,
    clients: int = 16,
    load_s: tuple[float, float] = (2.0, 6.0),
    seed: int | None = None,
    out: Any = None,
) -> list[RoundReport]:
    """``rounds`` rounds of load, ``kill -9`` at a random moment, restart and check."""
    rng = random.Random(seed)
    gateway = Gateway(database_url, data_dir)
    keys = gateway.keys(clients)
    reports = []
    gateway.start()
    try:
        seen_interrupted = 0
        for n in range(1, rounds + 1):
            report = RoundReport(n, rng.uniform(*load_s))
            acked, report.client_errors = load_and_kill(
                gateway, keys, clients=clients, load_s=report.load_s
            )
            report.acknowledged = len(acked)
            report.restart_s = gateway.start()
            check_round(gateway, acked, report)
            report.interrupted, seen_interrupted = (
                report.interrupted - seen_interrupted,
                report.interrupted,
            )
            reports.append(report)
            if out is not None:
                print(report.line(), file=out, flush=True)
    finally:
        gateway.stop()
    return reports


def soak_replicas(
    database_url: str,
    work: Path,
    *,
    rounds: int,
    clients: int = 32,
    load_s: tuple[float, float] = (2.0, 6.0),
    seed: int | None = None,
    out: Any = None,
) -> list[RoundReport]:
    """``rounds`` rounds against two replicas: ``kill -9`` one of them (alternately) under load,
    restart it, check everything either acknowledged."""
    rng = random.Random(seed)
    shared = {
        "CUSTODY_BLOB_STORE": "database"
        if database_url.startswith("postgresql")
        else f"file:{work / 'blobs'}",
        "CUSTODY_LOG_KEY_FILE": str(work / "ledger-note.key"),
    }
    gateways = [Gateway(database_url, work / f"replica-{i}", shared) for i in range(2)]
    keys = gateways[0].keys(clients)
    reports = []
    for gateway in gateways:
        gateway.start()
    try:
        seen_interrupted = 0
        for n in range(1, rounds + 1):
            victim = gateways[n % 2]
            report = RoundReport(n, rng.uniform(*load_s))
            acked, report.client_errors = load_and_kill(
                victim, keys, clients=clients, load_s=report.load_s, serving=gateways
            )
            report.acknowledged = len(acked)
            report.restart_s = victim.start()
            check_round(victim, acked, report)
            report.interrupted, seen_interrupted = (
                report.interrupted - seen_interrupted,
                report.interrupted,
            )
            reports.append(report)
            if out is not None:
                print(f"replica {n % 2} killed; " + report.line(), file=out, flush=True)
    finally:
        for gateway in gateways:
            gateway.stop()
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temporary dir")
    parser.add_argument("--replicas", type=int, choices=(1, 2), default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="custody-soak-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'custody.db'}"
        began = time.monotonic()
        if args.replicas == 2:
            reports = soak_replicas(
                url, Path(tmp), rounds=args.rounds, clients=args.clients, out=sys.stdout
            )
        else:
            reports = soak(
                url, Path(tmp) / "data", rounds=args.rounds, clients=args.clients, out=sys.stdout
            )
    acked = sum(r.acknowledged for r in reports)
    interrupted = sum(r.interrupted for r in reports)
    bad = [r for r in reports if r.problems or not r.verify_ok]
    print(
        f"{len(reports)} rounds in {time.monotonic() - began:.0f} s: {acked} acknowledged responses"
        f" all fully recorded: {'yes' if not bad else 'NO'}; {interrupted} interrupted turns"
        f" recorded; verify passed after every round: {'yes' if not bad else 'NO'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
