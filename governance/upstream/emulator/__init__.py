"""Custody's Gemini emulator: Gemini's REST wire format for image models, answered locally.

It stands in for Gemini in tests, demos and benchmarks (real Gemini is unreachable offline). It
never calls Google and labels everything it produces as its own: ``modelVersion`` reads
``custody-emulator-<version> (emulating <model>)`` and every response has ``x-custody-emulator: 1``.

    app = create_emulator_app(EmulatorConfig(blocked_words=["gore"], latency_ms=0))

See ``app`` (routes), ``engine`` (safety triggers, Gemini-3 thoughts and signatures), ``edits``
(prompt keywords → Pillow edits, measured costs), ``faults`` (fault directives, error envelope).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from governance.upstream.emulator.config import EmulatorConfig

if TYPE_CHECKING:
    from governance.upstream.emulator.app import RequestLog, create_emulator_app

__all__ = ["EmulatorConfig", "RequestLog", "create_emulator_app"]


def __getattr__(name: str) -> Any:
    # The app (FastAPI, Pillow) loads on first use, not whenever a CLI builds its parser.
    if name in ("RequestLog", "create_emulator_app"):
        from governance.upstream.emulator import app

        return getattr(app, name)
    raise AttributeError(name)
