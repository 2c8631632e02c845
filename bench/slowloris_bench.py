"""A 20,000-connection slow-loris against a real ``custody serve``, with health probes throughout.

Four attacker processes (5,000 descriptors each, under a 20,000 per-process limit) open
connections from 40 loopback source addresses, send the start of a request line and nothing
more, and reopen every connection the gateway closes, for the whole run. Meanwhile two threads of
this process each open a fresh connection to ``/healthz`` every 0.2 s: one on the serving port
(where the attack is), one on the health port (``CUSTODY_HEALTH_PORT``,
``governance.health_listener``). Reported for each: the slowest, p99 and median probe time and
failed probes; for the serving port also the probes whose TCP handshake took 1 s or more (a SYN
the kernel dropped because the accept queue was full) and the kernel's listen-queue overflows
during the run (``/proc/net/netstat``); the gateway's descriptors and RSS (read from /proc).

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
import threading
import time
from pathlib import Path
from typing import cast

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
            sock, i = cast(socket.socket, key.fileobj), key.data
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


def _gateway(port: int, health_port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env.update(
        PYTHONPATH=str(REPO),
        CUSTODY_DATA_DIR=str(data_dir),
        CUSTODY_PORT=str(port),
        CUSTODY_HEALTH_PORT=str(health_port),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "serve", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            counters = dict(zip(names.split(), values.split(), strict=True))
            return int(counters.get("ListenOverflows", 0))
    return 0


def probe_once(port: int) -> tuple[float, float, bool]:
    """One fresh-connection ``GET /healthz``: (handshake seconds, total seconds, answered 200)."""
    started = time.monotonic()
    connected = started
    ok = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            connected = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            ok = answer.startswith(b"HTTP/1.1 200")
    except OSError:
        pass
    return connected - started, time.monotonic() - started, ok


class Prober(threading.Thread):
    """Probes ``port`` every ``pause_s`` until ``end`` (monotonic)."""

    def __init__(self, port: int, end: float, pause_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.port, self.end, self.pause_s = port, end, pause_s
        self.results: list[tuple[float, float, bool]] = []

    def run(self) -> None:
        while time.monotonic() < self.end:
            self.results.append(probe_once(self.port))
            time.sleep(self.pause_s)

    def figures(self) -> dict[str, float]:
        times = sorted(total for _, total, _ in self.results)
        return {
            "probes": len(times),
            "failed": sum(not ok for *_, ok in self.results),
            "slowest_s": times[-1],
            "p99_s": times[max(0, int(len(times) * 0.99) - 1)],
            "median_s": times[len(times) // 2],
            "syn_retried": sum(connect >= 0.9 for connect, _, _ in self.results),
        }


def _proc_figures(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return fds, rss_kb


def run(seconds: float) -> dict[str, dict[str, float]]:
    port, health_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        gateway = _gateway(port, health_port, Path(tmp))
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
                baseline.append(probe_once(port)[1])
                time.sleep(0.05)
            baseline.sort()
            overflows_before = listen_overflows()
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
            end = time.monotonic() + seconds + 10
            probers = {"serving": Prober(port, end), "health": Prober(health_port, end)}
            for prober in probers.values():
                prober.start()
            peak_fds = 0
            while time.monotonic() < end:
                peak_fds = max(peak_fds, _proc_figures(gateway.pid)[0])
                time.sleep(0.5)
            for prober in probers.values():
                prober.join()
            overflows = listen_overflows() - overflows_before
            fds, rss_after = _proc_figures(gateway.pid)
            for proc in attackers:
                proc.join(timeout=60)
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    figures = {name: prober.figures() for name, prober in probers.items()}
    figures["gateway"] = {
        "baseline_median_s": baseline[len(baseline) // 2],
        "listen_overflows": overflows,
        "peak_fds": peak_fds,
        "fds_end": fds,
        "rss_before_mb": rss_before / 1024,
        "rss_after_mb": rss_after / 1024,
        "load_average": os.getloadavg()[0],
    }
    return figures


def main() -> None:
    seconds = 10.0 if os.environ.get("CUSTODY_BENCH_QUICK") else 40.0
    figures = run(seconds)
    gateway = figures["gateway"]
    print(
        f"slow-loris {CONNECTIONS:,} connections from {SOURCES} addresses, {seconds:.0f} s"
        f" (load average {gateway['load_average']:.1f}):",
        flush=True,
    )
    for name, port_name in (("health", "health port"), ("serving", "serving port")):
        f = figures[name]
        print(
            f"  /healthz on the {port_name}: answered within {f['slowest_s']:.3f} s throughout"
            f" ({f['probes']} probes, {f['failed']} failed, {f['syn_retried']} with a dropped"
            f" SYN, p99 {f['p99_s']:.3f} s, median {f['median_s']:.3f} s)",
            flush=True,
        )
    print(
        f"  unattacked median {gateway['baseline_median_s'] * 1000:.1f} ms; kernel listen-queue"
        f" overflows {gateway['listen_overflows']:,}; gateway descriptors peak"
        f" {gateway['peak_fds']:,}, RSS {gateway['rss_before_mb']:.0f} →"
        f" {gateway['rss_after_mb']:.0f} MB",
        flush=True,
    )


if __name__ == "__main__":
    main()
