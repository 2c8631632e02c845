"""The ``custody`` command line: serve, emulator, keys, ledger, policy, verify, version."""

from __future__ import annotations

import argparse
import logging
import sys

from governance import __version__
from governance.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from governance.app import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    print(
        f"Custody {__version__} serving on http://{settings.host}:{settings.port}"
        f" (data in {settings.data_dir.resolve()})",
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
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
    from governance.erasure_cli import register as register_erase
    from governance.ledger_cli import register as register_ledger
    from governance.policy.cli import register as register_policy
    from governance.provenance.cli import register as register_verify
    from governance.upstream.emulator.cli import register as register_emulator

    for register in (
        register_keys, register_emulator, register_ledger, register_policy, register_verify
    ):
        register(sub)
    register_erase(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations run on every start
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
