"""The ``custody`` command line: serve, doctor, emulator, keys, accounts, ledger, policy, verify,
version.

Every command resolves settings and opens state the same way (``governance.settings``,
``governance.state``). A configuration or state problem is one line on stderr and exit status 2,
never a traceback: the person running the command needs the sentence, not the stack.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from governance import __version__
from governance.settings import ConfigError, Settings

log = logging.getLogger("custody")


def _libc() -> Any:
    """glibc through ctypes, or None where the C library has no ``mallopt`` (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(arena_max: int, mmap_threshold: int) -> bool:
    """Set glibc's malloc up for a gateway of 2 MB requests; 0 leaves a knob at glibc's default.

    ``arena_max`` (``mallopt(M_ARENA_MAX)``): glibc gives each thread that allocates an arena of
    its own (up to 8 per core) and each arena keeps the request and response buffers it once held.
    ``mmap_threshold`` (``mallopt(M_MMAP_THRESHOLD)``): above a fixed threshold a buffer is mapped
    and goes back to the system when freed, so every new one is faulted in page by page again
    (tens of thousands of page faults a turn); 0 keeps glibc's dynamic threshold, which serves the
    2 MB buffers from the arenas, and ``trim_malloc_every`` gives their free pages back instead.
    Called before any thread starts. False where the C library is not glibc (no effect there).
    """
    if arena_max <= 0 and mmap_threshold <= 0:
        return True
    libc = _libc()
    if libc is None:
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # <malloc.h>
    done = True
    if arena_max > 0:
        done = bool(libc.mallopt(m_arena_max, arena_max)) and done
    if mmap_threshold > 0:
        done = bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and done
    return done


HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def with_huge_pages(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with glibc's ``glibc.malloc.hugetlb=1`` tunable added, or None when it holds
    a ``glibc.malloc.hugetlb`` setting already (or this is not Linux).

    With it glibc's malloc asks for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on the
    memory it maps: each 2–4 MB buffer of a turn (above ``CUSTODY_MALLOC_MMAP_THRESHOLD`` every
    one is a new mapping) is then faulted in a 2 MiB page at a time instead of 512 pages of
    4 KiB. Same process, same buffers: CPU per 1024² fingerprint 34–39 → 26–30 ms, page faults
    5,088 → 2,145–2,405, peak RSS unchanged (docs/performance.md, "Huge pages"). A tunable is
    read by the dynamic loader at start-up only, so ``custody serve`` re-executes itself once
    with it. A C library that is not glibc ignores the variable; so does a kernel whose
    transparent huge pages are ``never``."""
    if not sys.platform.startswith("linux"):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current:
        return None
    tunables = f"{current}:{HUGE_PAGE_TUNABLE}" if current else HUGE_PAGE_TUNABLE
    return {**environ, "GLIBC_TUNABLES": tunables}


def _reexec_with_huge_pages() -> None:
    """Replace this process by the same command with ``with_huge_pages``' environment (same pid,
    same open files); returns only when there is nothing to do or the exec failed."""
    env = with_huge_pages(os.environ)
    if env is None:
        return
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:  # serve without it rather than not at all
        log.warning("custody serve: could not restart with %s (%s)", HUGE_PAGE_TUNABLE, exc)


def trim_malloc_every(interval_s: float) -> threading.Thread | None:
    """Give the free pages of glibc's arenas back to the system every ``interval_s`` seconds
    (``malloc_trim(0)``, in a daemon thread), so the buffers of past turns do not stay resident;
    None when ``interval_s`` is 0 or the C library is not glibc."""
    libc = _libc() if interval_s > 0 else None
    if libc is None:
        return None

    def trim() -> None:
        while True:
            time.sleep(interval_s)
            libc.malloc_trim(0)

    thread = threading.Thread(target=trim, name="custody-malloc-trim", daemon=True)
    thread.start()
    return thread


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    settings.upstream_key()  # a Custody key as upstream key: refuse before anything starts
    settings.check_blob_store()
    if settings.malloc_huge_pages:
        _reexec_with_huge_pages()  # before any thread, socket or heavy import
    # The app (FastAPI, c2pa, the policy engine: ~1 s of imports) only once the settings hold.
    from governance.app import create_app, server_options
    from governance.listening import bind_or_explain, run_on_socket

    if not tune_malloc(settings.malloc_arena_max, settings.malloc_mmap_threshold):
        log.warning("this C library is not glibc: CUSTODY_MALLOC_* settings have no effect")
    sock = bind_or_explain("custody serve", settings.host, settings.port, "--port or CUSTODY_PORT")
    if sock is None:
        return 2
    health_sock = None
    if settings.health_port:
        health_sock = bind_or_explain(
            "custody serve", settings.host, settings.health_port, "CUSTODY_HEALTH_PORT"
        )
        if health_sock is None:
            sock.close()
            return 2
    health = f", /healthz also on port {settings.health_port}" if settings.health_port else ""
    print(
        f"Custody {__version__} serving on http://{settings.host}:{settings.port}"
        f" (data in {settings.data_dir}{health})",
        flush=True,
    )
    # Start-up objects move out of the collector's view, so full collections follow the turns'
    # own garbage: request and upstream buffers held in reference cycles otherwise waited in the
    # oldest generation (see docs/performance.md, "Gateway, end to end").
    app = create_app(settings)  # raises the open-file limit (governance.fd_headroom)
    app.state.health_socket = health_sock
    gc.freeze()
    trim_malloc_every(settings.malloc_trim_interval_s)
    started = run_on_socket(
        sock,
        app,
        **server_options(app),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
    if not started:
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

    from governance.accounts.cli import register as register_accounts
    from governance.auth.cli import register as register_keys
    from governance.authorship_cli import register as register_authorship
    from governance.compliance.cli import register as register_query
    from governance.db_cli import register as register_db
    from governance.doctor import register as register_doctor
    from governance.erasure_cli import register as register_erase
    from governance.evidence.cli import register as register_evidence
    from governance.ledger_cli import register as register_ledger
    from governance.policy.cli import register as register_policy
    from governance.provenance_cli import register as register_verify
    from governance.upstream.emulator.cli import register as register_emulator

    for register in (
        register_db,
        register_doctor,
        register_keys,
        register_accounts,
        register_erase,
        register_evidence,
        register_authorship,
        register_emulator,
        register_ledger,
        register_policy,
        register_verify,
        register_query,
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
