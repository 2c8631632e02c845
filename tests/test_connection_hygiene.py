"""Connection hygiene against a real server: header and body deadlines, caps with eviction,
503 + Retry-After when every slot is busy, and /healthz answering throughout a slow-loris.

The full 20,000-connection slow-loris is ``bench/slowloris_bench.py``; here 2,000 connections
prove the same mechanisms in a few seconds. Timings are printed, never asserted.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from pathlib import Path

import httpx
import orjson

from tests.conftest import start_custody

MODEL_URL = "/v1beta/models/gemini-2.5-flash-image:generateContent"


def _host_port(custody) -> tuple[str, int]:
    host, port = custody.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def open_loris(address: tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` connections that each send the start of a request line and then nothing."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(address)
        socks.append(sock)
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_WRITE)
    pending = set(socks)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            sock = key.fileobj
            sel.unregister(sock)
            pending.discard(sock)
            with contextlib.suppress(OSError):
                sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
    sel.close()
    return socks


def closed_by_server(socks: list[socket.socket]) -> tuple[int, int]:
    """How many of ``socks`` the server closed, and how many of those with a 408 first."""
    closed = timed_out = 0
    for sock in socks:
        sock.setblocking(False)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
            closed += 1  # recv returned b"": end of stream
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        if data.startswith(b"HTTP/1.1 408"):
            timed_out += 1
    return closed, timed_out


def probe(base_url: str, rounds: int, pause_s: float) -> list[float]:
    """``rounds`` fresh-connection health probes; each one's answer time in seconds."""
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        resp = httpx.get(base_url + "/healthz", timeout=30, headers={"connection": "close"})
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}
        times.append(time.monotonic() - started)
        time.sleep(pause_s)
    return times


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_health_answers_through_a_2000_connection_slow_loris(tmp_path: Path) -> None:
    custody = start_custody(
        tmp_path / "c",
        header_timeout_s=4.0,
        max_connections=1500,  # fewer than the attack: the oldest idle ones are evicted
        max_connections_per_client=1200,
    )
    try:
        address = _host_port(custody)
        socks = open_loris(address, 2000)
        try:
            times = probe(custody.base_url, rounds=15, pause_s=0.1)
            time.sleep(4.5)  # past the header deadline: every loris left is cut with a 408
            times += probe(custody.base_url, rounds=5, pause_s=0.0)
            closed, timed_out = closed_by_server(socks)
        finally:
            for sock in socks:
                sock.close()
        counts = _table(custody).counts
        print(
            f"\nslow-loris 2000: health probe slowest {max(times):.3f} s of {len(times)};"
            f" server closed {closed} (408: {timed_out}); table {counts}"
        )
        assert counts["evicted"] >= 500  # 2000 connections into 1500 slots
        assert counts["header_timeout"] >= 1
        assert closed == 2000  # nothing held past the header deadline
        assert _table(custody).total <= 1  # only a probe's connection may be left
    finally:
        custody.stop()


def _table(custody):
    """The connection table of the server's guarded protocol."""
    return custody.server.server.config.http.connection_table


def _partial_post(custody, key: str, declared: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(_host_port(custody))
    head = (
        f"POST {MODEL_URL} HTTP/1.1\r\nHost: x\r\nx-goog-api-key: {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
    ).encode()
    sock.sendall(head + sent)
    return sock


def _read_response(sock: socket.socket, timeout_s: float = 30) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_slow_body_from_a_keyed_client_is_cut_and_recorded(tmp_path: Path) -> None:
    custody = start_custody(tmp_path / "c", body_idle_timeout_s=1.0, body_timeout_s=3.0)
    try:
        sock = _partial_post(custody, custody.keys["editor"], 5000, b'{"contents": [')
        code, headers, body = _read_response(sock)
        sock.close()
        assert code == 408
        error = orjson.loads(body)["error"]
        assert error["status"] == "DEADLINE_EXCEEDED"
        assert "CUSTODY_BODY_IDLE_TIMEOUT_S" in error["message"]
        turn = headers["x-custody-turn"]
        refused = [e for e in custody.ledger_events(turn) if e["type"] == "request.refused"]
        assert refused and refused[0]["body"]["reason"] == "REQUEST_BODY_TIMEOUT"
        assert refused[0]["body"]["request_bytes"] == len(b'{"contents": [')

        # A drip that beats the idle limit still meets the whole-body deadline.
        sock = _partial_post(custody, custody.keys["editor"], 5000, b"{")
        started = time.monotonic()
        code = 0
        sock.settimeout(0.5)
        for _ in range(40):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
        code, _, body = _read_response(sock)
        sock.close()
        print(f"\ndrip cut after {time.monotonic() - started:.2f} s")
        assert code == 408 and "CUSTODY_BODY_TIMEOUT_S" in orjson.loads(body)["error"]["message"]
        assert httpx.get(custody.base_url + "/healthz").status_code == 200

        from governance.auth.keys import create_key

        operator = create_key(
            custody.services.engine, tenant="custody", actor="ops@custody", roles=["operator"]
        )
        scrape = httpx.get(
            custody.base_url + "/metrics", headers={"authorization": f"Bearer {operator}"}
        ).text
        assert 'custody_requests_shed_total{reason="body_timeout"} 2.0' in scrape
        assert 'custody_connections_cut_total{reason="evicted"} 0.0' in scrape
    finally:
        custody.stop()


def test_over_the_inflight_limit_is_503_with_retry_after_and_health_still_answers(
    tmp_path: Path,
) -> None:
    custody = start_custody(tmp_path / "c", max_inflight_requests=1, body_idle_timeout_s=20.0)
    try:
        held = _partial_post(custody, custody.keys["editor"], 100, b"{")  # in flight, waiting
        time.sleep(0.3)
        resp = httpx.post(
            custody.base_url + MODEL_URL,
            content=b"{}",
            headers={"x-goog-api-key": custody.keys["editor"]},
        )
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        error = resp.json()["error"]
        assert error["status"] == "UNAVAILABLE"
        assert error["details"][0]["reason"] == "OVERLOADED"
        assert httpx.get(custody.base_url + "/healthz").status_code == 200
        held.close()
    finally:
        custody.stop()


def test_when_every_connection_is_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    custody = start_custody(tmp_path / "c", max_connections_per_client=2, body_idle_timeout_s=20.0)
    try:
        busy = [_partial_post(custody, custody.keys["editor"], 100, b"{") for _ in range(2)]
        time.sleep(0.3)
        extra = socket.create_connection(_host_port(custody))
        code, headers, body = _read_response(extra)
        extra.close()
        assert code == 503 and headers["retry-after"] == "1"
        assert orjson.loads(body)["error"]["details"][0]["reason"] == "OVERLOADED"
        for sock in busy:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(custody.base_url + "/healthz").status_code == 200
    finally:
        custody.stop()


def test_idle_keep_alive_connections_make_room_for_new_ones(tmp_path: Path) -> None:
    custody = start_custody(tmp_path / "c", max_connections_per_client=3)
    try:
        clients = [httpx.Client(base_url=custody.base_url) for _ in range(6)]
        for client in clients:  # each holds one idle keep-alive connection afterwards
            assert client.get("/healthz").status_code == 200
        assert _table(custody).counts["evicted"] >= 3
        for client in clients:  # an evicted connection is reopened by the client
            assert client.get("/healthz").status_code == 200
            client.close()
    finally:
        custody.stop()


def test_unknown_key_ids_do_not_grow_the_key_cache(tmp_path: Path) -> None:
    custody = start_custody(tmp_path / "c")
    try:
        ring = custody.services.keys
        before = ring.cached
        with httpx.Client(base_url=custody.base_url) as client:
            for i in range(300):
                resp = client.get("/api/v1/keys", headers={"authorization": f"Bearer ck_{i:x}_s"})
                assert resp.status_code in (401, 403)
        assert ring.cached == before
    finally:
        custody.stop()


def test_the_open_file_limit_is_raised_and_a_reserve_kept() -> None:
    from governance.fd_headroom import connection_budget

    budget = connection_budget(0, reserve=1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY
    assert budget == max(16, soft - 1024)
    assert connection_budget(100, reserve=1024) == min(100, budget)


def test_each_end_of_a_keep_alive_connection_lets_go_before_its_peer_closes_it() -> None:
    """Found by the two-replica load run: 502 "no complete answer from the upstream
    (ReadError)" and client-side resets, a few in a thousand turns. The gateway's upstream client
    and the emulator (uvicorn) both dropped idle connections at 5 s, as did google-genai's httpx
    and the gateway: a request sent as the server closed the connection was lost. The client
    must let go first, on both hops."""
    import uvicorn

    from governance.settings import Settings
    from governance.upstream.client import KEEPALIVE_EXPIRY_S
    from governance.upstream.emulator.cli import EMULATOR_KEEP_ALIVE_S

    assert KEEPALIVE_EXPIRY_S < EMULATOR_KEEP_ALIVE_S  # gateway -> emulator
    uvicorn_default_s = uvicorn.Config(app=None).timeout_keep_alive
    assert uvicorn_default_s > KEEPALIVE_EXPIRY_S  # any uvicorn upstream
    assert httpx.Limits().keepalive_expiry is not None  # google-genai's transport -> gateway
    assert httpx.Limits().keepalive_expiry < Settings().keep_alive_timeout_s


def test_a_keep_alive_connection_idle_past_five_seconds_is_still_served(tmp_path: Path) -> None:
    custody = start_custody(tmp_path / "c")
    try:
        limits = httpx.Limits(max_connections=1, keepalive_expiry=60)
        with httpx.Client(base_url=custody.base_url, limits=limits) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(6)  # past the old 5 s keep-alive timeout
            assert _table(custody).total == 1, "the idle connection is still open"
            assert client.get("/healthz").status_code == 200
    finally:
        custody.stop()
