"""The built-in emulator, served on a loopback port from a background thread of this process.

It runs behind a real HTTP socket (not an in-memory transport) so the gateway's forwarding path is
the same one it uses against Gemini, and the emulator's Pillow work never blocks the gateway's loop.

A server here never reconfigures logging: ``uvicorn.Config(log_level=...)`` sets the levels of the
process-wide ``uvicorn.*`` loggers, which silenced the gateway's own "Uvicorn running on" line.
Its own start-up chatter is dropped by a filter that matches only records from its thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from governance.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")


class _QuietThread(logging.Filter):
    """Drops records below WARNING logged from one server thread; everything else passes."""

    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.threadName != self.thread_name


class ThreadedServer:
    """A uvicorn server for an ASGI app in a daemon thread; ``start`` returns once it listens."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int | None = None, **options: Any
    ) -> None:
        """``options``: further ``uvicorn.Config`` options (``governance.app.server_options``)."""
        self.host = host
        self.port = port or free_port(host)
        # log_config=None and log_level=None: leave every logger as the process configured it.
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_config=None,
            log_level=None,
            lifespan="on",
            **options,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, daemon=True, name=f"uvicorn-{host}:{self.port}"
        )
        self._quiet = _QuietThread(self.thread.name)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> ThreadedServer:
        for name in _UVICORN_LOGGERS:
            logging.getLogger(name).addFilter(self._quiet)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.base_url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        for name in _UVICORN_LOGGERS:
            logging.getLogger(name).removeFilter(self._quiet)


@dataclass
class EmbeddedEmulator:
    """The emulator serving on loopback for this gateway process."""

    server: ThreadedServer

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @classmethod
    def start(cls, settings: Settings) -> EmbeddedEmulator:
        from governance.upstream.emulator import EmulatorConfig, create_emulator_app

        app = create_emulator_app(
            EmulatorConfig(
                blocked_words=list(settings.emulator_blocked_words),
                latency_ms=settings.emulator_latency_ms,
            )
        )
        return cls(ThreadedServer(app).start())

    def stop(self) -> None:
        self.server.stop()
