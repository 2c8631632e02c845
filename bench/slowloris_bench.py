"""A 20,000-connection slow-loris against a real ``custody serve``, with health probes throughout.

Four attacker processes (5,000 descriptors each, under a 20,000 per-process limit) open
connections from 40 loopback source addresses, send the start of a request line and nothing
more, and reopen every connection the gateway closes, for the whole run. Meanwhile this process
opens a fresh connection to ``/healthz`` every 0.2 s. Reported: the slowest and p99 probe time,
failed probes, and the gateway's descriptors and RSS at the end (read from /proc).

``python -m bench slowloris_bench`` (``CUSTODY_BENCH_QUICK=1``: 10 s instead of 40 s). The
2,000-connection version runs in ``tests/test_connection_hygiene.py``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from governance.upstream.embedded import free_port

REPO = Path(__file__).resolve().parent.parent
CONNECTIONS = 20_000
ATTACKERS = 4
SOURCES = 40  # 127.0.1.1 .. 127.0.1.40: 500 connections per source address
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: "


def attack(port: int, first_source: int, sources: int, count: int, seconds: float) -> None:
    """Hold ``count`` half-open connections to ``port`` for ``seconds``, reopening closed ones."""
    import resource

    os.nice(19)  # the attacker would be another machine: it must not starve the gateway's CPU
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    opened = 0

    def open_one(i: int) -> None:
        nonlocal opened
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.1.{first_source + i % sources}", 0))
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        sel.register(sock, selectors.EVENT_WRITE, i)
        opened += 1

    for i in range(count):
        try:
            open_one(i)
        except OSError:
            time.sleep(0.01)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, events in sel.select(timeout=0.5):
            sock, i = key.fileobj, key.data
            if events & selectors.EVENT_WRITE and key.events == selectors.EVENT_WRITE:
                try:
                    sock.send(PARTIAL)
                    sel.modify(sock, selectors.EVENT_READ, i)
                    continue
                except OSError:
                    pass
            else:
                with contextlib.suppress(OSError):
                    if sock.recv(65536):
                        continue  # a 408 or 503 ahead of the close
            sel.unregister(sock)
            sock.close()
            with contextlib.suppress(OSError):
                open_one(i)
    print(f"attacker {first_source}: opened {opened} connections in all", flush=True)


def _gateway(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env.update(PYTHONPATH=str(REPO), CUSTODY_DATA_DIR=str(data_dir), CUSTODY_PORT=str(port))
    return subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "serve", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _proc_figures(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return fds, rss_kb


def run(seconds: float) -> dict[str, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        gateway = _gateway(port, Path(tmp))
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
            _, rss_before = _proc_figures(gateway.pid)
            baseline = []
            for _ in range(20):  # the same probe with no attack: the run's own baseline
                started = time.monotonic()
                httpx.get(base + "/healthz", timeout=30, headers={"connection": "close"})
                baseline.append(time.monotonic() - started)
                time.sleep(0.05)
            baseline.sort()
            per = SOURCES // ATTACKERS
            attackers = [
                multiprocessing.Process(
                    target=attack,
                    args=(port, 1 + n * per, per, CONNECTIONS // ATTACKERS, seconds + 10),
                )
                for n in range(ATTACKERS)
            ]
            for proc in attackers:
                proc.start()
            times: list[float] = []
            failures = 0
            peak_fds = 0
            end = time.monotonic() + seconds + 10
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    resp = httpx.get(base + "/healthz", timeout=30, headers={"connection": "close"})
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                times.append(time.monotonic() - started)
                failures += not ok
                peak_fds = max(peak_fds, _proc_figures(gateway.pid)[0])
                time.sleep(0.2)
            fds, rss_after = _proc_figures(gateway.pid)
            for proc in attackers:
                proc.join(timeout=60)
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    times.sort()
    return {
        "probes": len(times),
        "failed": failures,
        "slowest_s": times[-1],
        "p99_s": times[int(len(times) * 0.99) - 1],
        "median_s": times[len(times) // 2],
        "baseline_median_s": baseline[len(baseline) // 2],
        "peak_fds": peak_fds,
        "fds_end": fds,
        "rss_before_mb": rss_before / 1024,
        "rss_after_mb": rss_after / 1024,
    }


def main() -> None:
    seconds = 10.0 if os.environ.get("CUSTODY_BENCH_QUICK") else 40.0
    figures = run(seconds)
    print(
        f"slow-loris {CONNECTIONS:,} connections from {SOURCES} addresses, {seconds:.0f} s:"
        f" health probe answered within {figures['slowest_s']:.3f} s throughout"
        f" ({figures['probes']} probes, {figures['failed']} failed, p99"
        f" {figures['p99_s']:.3f} s, median {figures['median_s']:.3f} s ="
        f" {figures['median_s'] / figures['baseline_median_s']:.0f}x the unattacked median of"
        f" {figures['baseline_median_s'] * 1000:.1f} ms); gateway descriptors"
        f" peak {figures['peak_fds']:,}, RSS {figures['rss_before_mb']:.0f} →"
        f" {figures['rss_after_mb']:.0f} MB",
        flush=True,
    )


if __name__ == "__main__":
    main()
