"""The built-in emulator, served on a loopback port from a background thread of this process.

It runs behind a real HTTP socket (not an in-memory transport) so the gateway's forwarding path is
the same one it uses against Gemini, and the emulator's Pillow work never blocks the gateway's loop.

A server here never reconfigures logging: ``uvicorn.Config(log_level=...)`` sets the levels of the
process-wide ``uvicorn.*`` loggers, which silenced the gateway's own "Uvicorn running on" line.
Its own start-up chatter is dropped by a filter that matches only records from its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
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
_server_log = logging.getLogger("uvicorn.error")  # where uvicorn's own shutdown logs


class _QuietThread(logging.Filter):
    """Drops records below WARNING logged from one server thread; everything else passes."""

    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.threadName != self.thread_name


class _PromptServer(uvicorn.Server):
    """uvicorn's server, which stops as soon as it is told to and its connections are closed.

    uvicorn polls: its main loop looks at ``should_exit`` every 0.1 s, and its shutdown sleeps
    0.1 s after asking each connection to close, then checks every 0.1 s until the connections
    and their tasks are gone. A stop cost 0.15-0.2 s of that waiting, twice per gateway with its
    emulator. Here ``wake`` ends the main loop's wait at once and the shutdown checks every 5 ms;
    the steps are uvicorn's, in its order (stop accepting, close each connection, wait for
    connections and tasks up to ``timeout_graceful_shutdown``, then the lifespan shutdown).
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _woken: asyncio.Event | None = None

    def wake(self) -> None:
        """From any thread: look at ``should_exit`` now, not at the next tick."""
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
                loop.call_soon_threadsafe(woken.set)

    async def main_loop(self) -> None:
        self._woken = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        _server_log.info("Shutting down")
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        state = self.server_state
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while (state.connections or state.tasks) and not self.force_exit:
                    await asyncio.sleep(0.005)
                for server in self.servers:
                    await server.wait_closed()
        except TimeoutError:
            _server_log.error(
                "Cancel %s running task(s), timeout graceful shutdown exceeded", len(state.tasks)
            )
            for task in state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


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
        self.server = _PromptServer(config)
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
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.wake()
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
