"""``custody emulator``: serve the Gemini emulator on its own port (for demos and benchmarks).

It starts and stops as ``custody serve`` does (``governance.listening``): a busy port is one line
and exit status 2 before the banner, the banner prints once, uvicorn's startup line appears, and
SIGTERM exits 0 after a clean shutdown.
"""

from __future__ import annotations

import argparse

from governance.upstream.emulator.config import EmulatorConfig

EMULATOR_KEEP_ALIVE_S = 75  # seconds an idle connection stays open

BANNER = """\
================================================================================
  CUSTODY GEMINI EMULATOR — this is NOT Google Gemini.
  Serving Gemini's REST API (v1 and v1beta) on http://{host}:{port}
  Images are made by local Pillow edits; modelVersion reads "custody-emulator-…".
  Blocked words: {words}   Added latency: {latency} ms   API key required: {key}
================================================================================"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``emulator`` subcommand to the ``custody`` command line."""
    parser = sub.add_parser("emulator", help="serve the built-in Gemini emulator (not Gemini)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--blocked-word",
        action="append",
        dest="blocked_words",
        metavar="WORD",
        help="a word whose prompts are blocked (repeatable; default: forbidden, gore)",
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to every call")
    parser.add_argument("--api-key", default=None, help="require this key (x-goog-api-key/?key=)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request line")
    parser.set_defaults(func=run_emulator)


def run_emulator(args: argparse.Namespace) -> int:
    """Bind the port, print the banner, then serve until SIGTERM/SIGINT (exit status 0)."""
    from governance.listening import bind_or_explain, run_on_socket
    from governance.upstream.emulator import create_emulator_app

    config = EmulatorConfig(latency_ms=args.latency_ms, api_key=args.api_key)
    if args.blocked_words:
        config.blocked_words = list(args.blocked_words)
    sock = bind_or_explain("custody emulator", args.host, args.port, "--port")
    if sock is None:
        return 2
    print(
        BANNER.format(
            host=args.host,
            port=args.port,
            words=", ".join(config.blocked_words) or "(none)",
            latency=config.latency_ms,
            key="yes" if config.api_key else "no",
        ),
        flush=True,
    )
    started = run_on_socket(
        sock,
        create_emulator_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        # Gemini's front end keeps idle connections open far longer than uvicorn's 5 s; at 5 s
        # a client's request on a connection closing at that instant is lost (ReadError).
        timeout_keep_alive=EMULATOR_KEEP_ALIVE_S,
    )
    return 0 if started else 3
