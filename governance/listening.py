"""Serving an ASGI app from the command line: bind first, then announce, then run uvicorn.

Contract, shared by ``custody serve`` and ``custody emulator``: the port is bound before anything
is printed or opened, so a busy port is one line on stderr and exit status 2 — never a banner
followed by uvicorn's error; uvicorn's own "Uvicorn running on" line appears; SIGTERM/SIGINT end
with exit status 0 once the graceful shutdown has finished. uvicorn alone gets the last two wrong
when it is handed a socket bound beforehand (no startup line) and re-raises the captured signal
after a clean shutdown (status 143).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from collections.abc import Iterator
from typing import Any


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``OSError`` when it cannot be bound)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind_or_explain(command: str, host: str, port: int, how_to_change: str) -> socket.socket | None:
    """``bind_listener``, or ``None`` after one line on stderr that says what to do instead."""
    try:
        return bind_listener(host, port)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        reason = "is in use" if in_use else f"cannot be bound ({exc.strerror})"
        print(
            f"{command}: port {port} on {host} {reason}; choose another with {how_to_change}",
            file=sys.stderr,
        )
        return None


def server_class() -> type:
    """uvicorn's ``Server``, with the startup line and a clean exit status (module docstring)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if sockets is not None and self.started:
                self._log_started_message(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self.stopped_by = list(self._captured_signals)
                    self._captured_signals.clear()

    return GracefulServer


def run_on_socket(sock: socket.socket, app: Any, **config: Any) -> bool:
    """Serve ``app`` on the bound ``sock`` until SIGTERM/SIGINT; ``False`` if start-up failed
    (uvicorn has logged why). ``config`` (host and port included, for uvicorn's startup line) is
    passed to ``uvicorn.Config``; the socket is closed afterwards."""
    import uvicorn

    server = server_class()(uvicorn.Config(app, **config))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return bool(server.started)
