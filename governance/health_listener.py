"""Liveness on a port of its own, answered by a process of its own (``CUSTODY_HEALTH_PORT``).

On the serving port a health probe shares the kernel's accept queue with everyone else. Under a
slow-loris larger than the connection cap that queue is always full: every connection the guard
evicts comes straight back, the kernel drops new SYNs (the probe's among them, retransmitted
after 1 s, then 3 s) and a probe that gets in waits behind up to a backlog of attackers'
connections. No policy inside the process can fix that: the queue is the kernel's and first come,
first served. A thread of the gateway with a listener of its own does not suffice either: the
serving process's garbage collections, over the objects of ten thousand held connections, hold
the GIL for hundreds of milliseconds at a time on a loaded machine (docs/performance.md,
"Slow-loris", has the figures).

So ``custody serve`` hands the health port's socket to a small child process
(``python -m governance.health_listener``) that answers ``GET``/``HEAD /healthz`` and nothing
else. It is not a blind "a process exists": the serving loop writes a byte down a pipe every
``BEAT_S``, and the child answers 503 once the last byte is older than ``stall_after_s``
(``CUSTODY_HEALTH_STALL_S``) — the serving loop is stuck and the process should be restarted.
When the gateway exits, for whatever reason, the pipe reaches end-of-file and the child exits
too (it ignores SIGINT and SIGTERM sent to the whole process group, so it answers throughout the
gateway's graceful shutdown). At most ``MAX_CONNECTIONS`` connections at once, each with
``HEAD_TIMEOUT_S`` for its request head: the port is for load balancers and orchestrators, bound
where only they reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

from governance.raw_http import raw_error_response

log = logging.getLogger("custody")

BEAT_S = 0.25
MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 2.0
MAX_HEAD_BYTES = 8 * 1024
_TOO_LONG = asyncio.LimitOverrunError  # a request head past MAX_HEAD_BYTES
_OK_BODY = json.dumps({"status": "ok"}, separators=(",", ":")).encode()  # as /healthz


def health_response(beat_age_s: float, stall_after_s: float, *, head: bool = False) -> bytes:
    """200 ``{"status":"ok"}`` while the serving loop beats, else 503 saying it is stuck."""
    if beat_age_s > stall_after_s:
        return raw_error_response(
            503,
            "Service Unavailable",
            "UNAVAILABLE",
            "EVENT_LOOP_STALLED",
            f"Custody's serving loop has not run for {beat_age_s:.1f} s (more than"
            f" CUSTODY_HEALTH_STALL_S = {stall_after_s:g} s): restart this process.",
            retry=0,
        )
    head_lines = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(_OK_BODY)}\r\nconnection: close\r\n\r\n"
    )
    return head_lines.encode() + (b"" if head else _OK_BODY)


def answer(request_head: bytes, beat_age_s: float, stall_after_s: float) -> bytes:
    """The health port's whole response to one request head."""
    parts = request_head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return raw_error_response(
            400,
            "Bad Request",
            "INVALID_ARGUMENT",
            "MALFORMED_HTTP",
            "The request line is not well-formed HTTP/1.1; this port serves GET /healthz only.",
            retry=0,
        )
    method, target = parts[0], parts[1].split("?", 1)[0]
    if target == "/healthz" and method in ("GET", "HEAD"):
        return health_response(beat_age_s, stall_after_s, head=method == "HEAD")
    return raw_error_response(
        404,
        "Not Found",
        "NOT_FOUND",
        "NOT_SERVED",
        f"{method} {target} is not served on the health port (CUSTODY_HEALTH_PORT): it answers"
        " GET /healthz only; every other route is on CUSTODY_PORT.",
        retry=0,
    )


# -- the child process -----------------------------------------------------------------------


class _Responder:
    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.last_beat = time.monotonic()
        self.open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.open += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            writer.write(answer(head, time.monotonic() - self.last_beat, self.stall_after_s))
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, _TOO_LONG):
            pass  # too slow, too long or gone: nothing more to answer
        finally:
            self.open -= 1
            writer.close()


async def serve(sock: socket.socket, beats_fd: int, stall_after_s: float) -> None:
    """Answer ``/healthz`` on ``sock`` until ``beats_fd`` (the heartbeat pipe) reaches its end."""
    loop = asyncio.get_running_loop()
    responder = _Responder(stall_after_s)
    parent_gone = asyncio.Event()

    def read_beats() -> None:
        try:
            data = os.read(beats_fd, 4096)
        except BlockingIOError:
            return
        if data:
            responder.last_beat = time.monotonic()
        else:
            parent_gone.set()

    os.set_blocking(beats_fd, False)
    loop.add_reader(beats_fd, read_beats)
    for sig in (signal.SIGTERM, signal.SIGINT):
        # A terminal's Ctrl-C or a service manager's SIGTERM to the whole group is the gateway's
        # to act on: this process answers through the graceful shutdown and leaves at its end.
        signal.signal(sig, signal.SIG_IGN)
    server = await asyncio.start_server(
        responder.handle, sock=sock, limit=MAX_HEAD_BYTES, backlog=128
    )
    try:
        await parent_gone.wait()
    finally:
        loop.remove_reader(beats_fd)
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m governance.health_listener",
        description="Custody's health port (started by `custody serve`, not by hand).",
    )
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--beats-fd", type=int, required=True)
    parser.add_argument("--stall-after-s", type=float, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.socket_fd)
    asyncio.run(serve(sock, args.beats_fd, args.stall_after_s))
    return 0


# -- the gateway's side ----------------------------------------------------------------------


class HealthProcess:
    """The child answering on ``sock``, and the write end of its heartbeat pipe."""

    def __init__(self, sock: socket.socket, stall_after_s: float) -> None:
        self.port = int(sock.getsockname()[1])
        beats_r, self._beats_w = os.pipe()
        os.set_blocking(self._beats_w, False)
        try:
            self.child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "governance.health_listener",
                    f"--socket-fd={sock.fileno()}",
                    f"--beats-fd={beats_r}",
                    f"--stall-after-s={stall_after_s}",
                ],
                pass_fds=(sock.fileno(), beats_r),
            )
        finally:
            os.close(beats_r)
            sock.close()  # the child's now: if it dies, the port refuses, and probes fail
        self._told_gone = False

    def beat(self) -> None:
        """Tell the child the serving loop ran (a full pipe already says so)."""
        try:
            os.write(self._beats_w, b".")
        except BlockingIOError:
            pass
        except OSError:  # the child is gone
            if not self._told_gone:
                self._told_gone = True
                log.error(
                    "the health port's process (port %d) exited with status %s: /healthz there"
                    " now fails; restart this gateway",
                    self.port,
                    self.child.poll(),
                )

    def stop(self) -> None:
        """End the child (end-of-file on its pipe) and wait for it."""
        os.close(self._beats_w)
        try:
            self.child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


@contextlib.asynccontextmanager
async def health_port(
    sock: socket.socket | None, stall_after_s: float
) -> AsyncIterator[HealthProcess | None]:
    """Serve ``/healthz`` on ``sock`` (``None``: no health port) from a child process, with a
    heartbeat from the running loop, for as long as the context lasts."""
    if sock is None:
        yield None
        return
    health = HealthProcess(sock, stall_after_s)

    async def beat() -> None:
        while True:
            health.beat()
            await asyncio.sleep(BEAT_S)

    beating = asyncio.create_task(beat())
    try:
        yield health
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await asyncio.get_running_loop().run_in_executor(None, health.stop)


if __name__ == "__main__":
    sys.exit(main())
