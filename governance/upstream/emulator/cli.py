"""``custody emulator``: serve the Gemini emulator on its own port (for demos and benchmarks)."""

from __future__ import annotations

import argparse

from governance.upstream.emulator.config import EmulatorConfig

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
    parser.add_argument("--log-level", default="warning")
    parser.set_defaults(func=run_emulator)


def run_emulator(args: argparse.Namespace) -> int:
    """Print the banner, then serve until interrupted."""
    import uvicorn

    from governance.upstream.emulator import create_emulator_app

    config = EmulatorConfig(latency_ms=args.latency_ms, api_key=args.api_key)
    if args.blocked_words:
        config.blocked_words = list(args.blocked_words)
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
    uvicorn.run(
        create_emulator_app(config), host=args.host, port=args.port, log_level=args.log_level
    )
    return 0
