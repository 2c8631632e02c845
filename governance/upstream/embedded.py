"""The built-in emulator, served on a loopback port from a background thread of this process.

It runs behind a real HTTP socket (not an in-memory transport) so the gateway's forwarding path is
the same one it uses against Gemini, and the emulator's Pillow work never blocks the gateway's loop.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from governance.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """A uvicorn server for an ASGI app in a daemon thread; ``start`` returns once it listens."""

    def __init__(self, app: object, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.base_url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


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
