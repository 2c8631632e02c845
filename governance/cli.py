"""The ``custody`` command line: serve, doctor, emulator, keys, ledger, policy, verify, version.

Every command resolves settings and opens state the same way (``governance.settings``,
``governance.state``). A configuration or state problem is one line on stderr and exit status 2,
never a traceback: the person running the command needs the sentence, not the stack.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import socket
import sys
from collections.abc import Iterator

from governance import __version__
from governance.settings import ConfigError, Settings

log = logging.getLogger("custody")


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``OSError`` when it cannot be bound).

    The gateway binds before it announces anything or opens state, and hands this very socket to
    uvicorn, so "serving on" is never printed for a port another process holds.
    """
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


def _server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, except that SIGTERM/SIGINT end with exit status 0 after the graceful
        shutdown: uvicorn re-raises the captured signal once it has shut down, so the process died
        by that signal (status 143) although it had stopped cleanly. It also logs uvicorn's
        "Uvicorn running on" line for the socket bound beforehand (uvicorn skips it then)."""

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


def tune_malloc(arena_max: int, mmap_threshold: int) -> bool:
    """Set glibc's malloc up for a gateway of 2 MB requests; 0 leaves a knob at glibc's default.

    ``arena_max`` (``mallopt(M_ARENA_MAX)``): glibc gives each thread that allocates an arena of
    its own (up to 8 per core) and each arena keeps the request and response buffers it once held.
    ``mmap_threshold`` (``mallopt(M_MMAP_THRESHOLD)``): a fixed threshold turns off glibc's
    dynamic one, which after the first freed 2 MB buffer serves every later one from the arenas,
    where it stays; above the threshold a buffer is mapped and goes back to the system when freed.
    Called before any thread starts. False where the C library is not glibc (no effect there).
    """
    if arena_max <= 0 and mmap_threshold <= 0:
        return True
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # <malloc.h>
    done = True
    if arena_max > 0:
        done = bool(mallopt(m_arena_max, arena_max)) and done
    if mmap_threshold > 0:
        done = bool(mallopt(m_mmap_threshold, mmap_threshold)) and done
    return done


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from governance.app import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    settings.upstream_key()  # a Custody key as upstream key: refuse before anything starts
    if not tune_malloc(settings.malloc_arena_max, settings.malloc_mmap_threshold):
        log.warning("this C library is not glibc: CUSTODY_MALLOC_* settings have no effect")
    try:
        sock = bind_listener(settings.host, settings.port)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        reason = "is in use" if in_use else f"cannot be bound ({exc.strerror})"
        print(
            f"custody serve: port {settings.port} on {settings.host} {reason}; choose another"
            " with --port or CUSTODY_PORT",
            file=sys.stderr,
        )
        return 2
    print(
        f"Custody {__version__} serving on http://{settings.host}:{settings.port}"
        f" (data in {settings.data_dir})",
        flush=True,
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
    server = _server_class()(config)
    # Start-up objects move out of the collector's view, so full collections follow the turns'
    # own garbage: request and upstream buffers held in reference cycles otherwise waited in the
    # oldest generation (see docs/performance.md, "Gateway, end to end").
    gc.freeze()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        return 3  # start-up failed; uvicorn has logged why
    print("Custody stopped: the ledger and the upstream are closed.", flush=True)
    return 0


def _version(_: argparse.Namespace) -> int:
    print(f"custody {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="custody",
        description="Custody: provenance and governance gateway for Gemini image editing.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (Gemini-compatible API + native API)")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    serve.set_defaults(func=_serve)

    version = sub.add_parser("version", help="print Custody's version")
    version.set_defaults(func=_version)

    from governance.auth.cli import register as register_keys
    from governance.doctor import register as register_doctor
    from governance.erasure_cli import register as register_erase
    from governance.ledger_cli import register as register_ledger
    from governance.policy.cli import register as register_policy
    from governance.provenance.cli import register as register_verify
    from governance.upstream.emulator.cli import register as register_emulator

    for register in (
        register_doctor,
        register_keys,
        register_erase,
        register_emulator,
        register_ledger,
        register_policy,
        register_verify,
    ):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from governance.state import StateError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations run on every start
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe must fail here, inside the handler, not at exit
        return status
    except (ConfigError, StateError) as exc:
        print(f"custody {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a CUSTODY_* value of the wrong type
        problems = "; ".join(
            f"CUSTODY_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"custody {args.command}: invalid setting: {problems}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`custody verify IMG | head -1`). Python's documented recipe:
        # point stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
