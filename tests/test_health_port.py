"""The health port (``CUSTODY_HEALTH_PORT``): ``/healthz`` from a process of its own, which a
slow-loris on the serving port does not queue ahead of, which says 503 when the serving loop is
frozen, and which ends with the gateway however the gateway ends.

The 20,000-connection figures are ``bench/slowloris_bench.py``'s; timings here are printed, never
asserted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from governance.upstream.embedded import free_port
from tests.conftest import start_custody
from tests.test_connection_hygiene import _host_port, _table, closed_by_server, open_loris

REPO = Path(__file__).resolve().parent.parent


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_the_health_port_answers_through_a_slow_loris_on_the_serving_port(tmp_path: Path) -> None:
    health = free_port()
    custody = start_custody(
        tmp_path / "c",
        health_port=health,
        header_timeout_s=4.0,
        max_connections=1500,  # fewer than the attack: the oldest idle ones are evicted
        max_connections_per_client=1200,
    )
    try:
        socks = open_loris(_host_port(custody), 2000)
        try:
            times = []
            for _ in range(20):
                started = time.monotonic()
                resp = httpx.get(
                    f"http://127.0.0.1:{health}/healthz", headers={"connection": "close"}
                )
                times.append(time.monotonic() - started)
                assert resp.status_code == 200 and resp.json() == {"status": "ok"}
                time.sleep(0.1)
            closed, _ = closed_by_server(socks)
        finally:
            for sock in socks:
                sock.close()
        print(f"\nhealth port under a 2000-connection slow-loris: slowest {max(times):.3f} s")
        assert _table(custody).counts["evicted"] >= 500  # the attack did reach the serving port
        assert closed >= 500

        assert _raw(health, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == (200, b"")
        code, body = _raw(health, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        error = orjson.loads(body)["error"]
        assert (code, error["status"]) == (404, "NOT_FOUND")
        assert "CUSTODY_HEALTH_PORT" in error["message"] and "CUSTODY_PORT" in error["message"]
        code, body = _raw(health, b"\x16\x03\x01 not http\r\n\r\n")
        reason = orjson.loads(body)["error"]["details"][0]["reason"]
        assert (code, reason) == (400, "MALFORMED_HTTP")
        assert httpx.get(custody.base_url + "/healthz").status_code == 200  # still served there
    finally:
        custody.stop()
    child = custody.server.server.config.app.state.health_listener.child
    assert child.poll() is not None  # stopping the gateway stopped its health process


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env.update(
        HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), CUSTODY_DATA_DIR=str(tmp_path / "data")
    )
    env.update(extra)
    return env


def _poll_health(port: int, want: int, gateway: subprocess.Popen[str]) -> dict[str, object]:
    """Probe the health port until it answers ``want``; its JSON body."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert gateway.poll() is None, "custody serve exited"
        try:
            resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            if resp.status_code == want:
                return resp.json()  # type: ignore[no-any-return]
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the health port never answered {want}")


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in found]


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan nobody has reaped yet has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_frozen_gateway_is_unhealthy_there_and_a_killed_one_takes_it_along(
    tmp_path: Path,
) -> None:
    port, health = free_port(), free_port()
    env = _env(tmp_path, CUSTODY_HEALTH_PORT=str(health), CUSTODY_HEALTH_STALL_S="1")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert _poll_health(health, 200, gateway) == {"status": "ok"}
        helpers = [
            pid
            for pid in _children(gateway.pid)
            if b"governance.health_listener" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(helpers) == 1

        gateway.send_signal(signal.SIGSTOP)  # every thread of the serving process stops
        try:
            stalled = _poll_health(health, 503, gateway)
        finally:
            gateway.send_signal(signal.SIGCONT)
        error = stalled["error"]
        assert isinstance(error, dict) and error["details"][0]["reason"] == "EVENT_LOOP_STALLED"
        assert "restart this process" in error["message"]
        assert _poll_health(health, 200, gateway) == {"status": "ok"}  # it beats again

        gateway.kill()  # no shutdown at all: the heartbeat pipe's end ends the health process
        gateway.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _running(helpers[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(helpers[0]), "the health process outlived the gateway"
        try:
            httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=5)
            raise AssertionError("the health port still answers with the gateway gone")
        except httpx.ConnectError:
            pass
    finally:
        if gateway.poll() is None:
            gateway.kill()
        gateway.communicate()


def test_sigterm_to_the_whole_group_is_a_clean_stop_of_both(tmp_path: Path) -> None:
    """A service manager signals every process of the service: the health process leaves with
    the gateway, not before it (the gateway would report it as failed)."""
    health = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "serve", "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(tmp_path, CUSTODY_HEALTH_PORT=str(health)),
        cwd=REPO,
        start_new_session=True,  # its own process group, as under a service manager
    )
    try:
        _poll_health(health, 200, gateway)
        (helper,) = _children(gateway.pid)
        os.killpg(gateway.pid, signal.SIGTERM)
        output, _ = gateway.communicate(timeout=60)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.communicate()
    assert gateway.returncode == 0, output
    assert "health port's process" not in output and "Traceback" not in output, output
    deadline = time.monotonic() + 60
    while _running(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(helper)


def test_a_busy_health_port_is_one_clear_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        busy = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "governance.cli", "serve", "--port", str(free_port())],
            capture_output=True,
            text=True,
            env=_env(tmp_path, CUSTODY_HEALTH_PORT=str(busy)),
            cwd=REPO,
            timeout=300,
        )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"custody serve: port {busy} on 127.0.0.1 is in use; choose another with"
        " CUSTODY_HEALTH_PORT"
    )
    assert "serving on" not in proc.stdout
