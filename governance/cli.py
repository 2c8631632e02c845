"""The ``custody`` command line: serve, doctor, emulator, keys, ledger, policy, verify, version.

Every command resolves settings and opens state the same way (``governance.settings``,
``governance.state``). A configuration or state problem is one line on stderr and exit status 2,
never a traceback: the person running the command needs the sentence, not the stack.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from governance import __version__
from governance.settings import ConfigError, Settings

log = logging.getLogger("custody")


def _serve(args: argparse.Namespace) -> int:
    from governance.app import create_app
    from governance.listening import bind_or_explain, run_on_socket

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    settings.upstream_key()  # a Custody key as upstream key: refuse before anything starts
    sock = bind_or_explain("custody serve", settings.host, settings.port, "--port or CUSTODY_PORT")
    if sock is None:
        return 2
    print(
        f"Custody {__version__} serving on http://{settings.host}:{settings.port}"
        f" (data in {settings.data_dir})",
        flush=True,
    )
    started = run_on_socket(
        sock,
        create_app(settings),
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
